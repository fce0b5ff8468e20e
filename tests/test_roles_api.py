"""One vocabulary of role scores: GET /api/roles lists exactly the scores /api/heads and /api/overview carry."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.api.schemas import HeadRoles, RoleGrid
from app.inspect.observe.registry import METRICS as ROLES

NOT_ROLES = {"layer", "head", "kv_group"}


def test_roles_endpoint_serves_the_one_list(client: TestClient) -> None:
    r = client.get("/api/roles")
    assert r.status_code == 200
    served = r.json()["roles"]
    assert [x["name"] for x in served] == [role.name for role in ROLES]
    assert all(x["label"] and x["description"] for x in served)
    assert len({x["label"] for x in served}) == len(served)  # two scores never share a name on screen
    labels = {x["name"]: x["label"] for x in served}
    assert "probe" in labels["induction"] and "text" in labels["text_induction"]


def test_every_role_is_a_field_of_the_heads_response_and_back(client: TestClient) -> None:
    names = [role.name for role in ROLES]
    assert set(HeadRoles.model_fields) - NOT_ROLES == set(names)
    assert set(RoleGrid.model_fields) <= set(names)
    heads = client.post("/api/heads", json={"text": "a b a b a"}).json()["heads"]
    assert set(heads[0]) - NOT_ROLES == set(names)
    assert heads[0]["text_induction"] is not None  # "a" and "b" repeat
    stats = client.post("/api/overview", json={"text": "a b a b a"}).json()["stats"]
    assert set(stats) <= set(names)


def test_the_openapi_docs_describe_each_score_as_the_list_does(client: TestClient) -> None:
    fields = client.get("/openapi.json").json()["components"]["schemas"]["HeadRoles"]["properties"]
    for role in ROLES:
        assert fields[role.name]["description"] == role.definition
