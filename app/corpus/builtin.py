"""Built-in datasets, generated at run time (nothing but this code is committed): same texts on every call.

builtin:induction    seeded sequences of random common words, the first half repeated verbatim
builtin:ioi          indirect-object sentences: templates × ordered pairs of names
builtin:stdlib-docs  paragraphs of the docstrings of a fixed list of Python standard-library modules
"""

from __future__ import annotations

import functools
import importlib
import inspect
import random
import re
from collections.abc import Callable, Iterator

SEED = 0


def _words(text: str) -> tuple[str, ...]:
    """A whitespace-separated list written as text (reads better than a long literal)."""
    return tuple(text.split())


# Short, frequent words: most are one token in GPT-2-style BPE vocabularies, so the repeat is token-exact.
WORDS = _words(
    "time year people way day man thing woman life child world school state family student group country "
    "problem hand part place case week company system program question work government number night point "
    "home water room mother area money story fact month lot right study book eye job word business issue "
    "side kind head house service friend father power hour game line end member law car city name "
    "president team minute idea kid body information back parent face others level office door health "
    "person art war history party result change morning reason research girl guy moment air teacher force "
    "education foot boy age policy music market sense nation plan college interest death experience effect "
    "class control care field development role effort rate heart drug show leader light voice wife police "
    "mind price report decision son view relationship town road arm difference value building action model "
    "season society tax director position player record paper space ground form event official matter "
    "center couple site project activity star table need court oil situation cost industry figure street "
    "image phone data picture practice piece land product doctor wall patient worker news test movie north "
    "love support technology step baby computer type attention film tree source organization hair window "
    "evidence population site training truth bank song stock blue green river stone bird apple glass"
)
INDUCTION_TEXTS = 256
INDUCTION_HALF = 32  # words before the repeat: ≈ 70 tokens a text, under a job's default max_tokens of 128

PEOPLE = ("Mary", "John", "Tom", "James", "Anna", "Paul", "Sarah", "David", "Emma", "Mark", "Lisa", "Peter")
# {a} and {b} are introduced; {b} (the subject) gives something, so the indirect object is {a}.
IOI_TEMPLATES = (
    "When {a} and {b} went to the store, {b} gave a drink to",
    "When {a} and {b} went to the park, {b} gave a ball to",
    "After {a} and {b} arrived at the office, {b} handed a letter to",
    "While {a} and {b} were working in the garden, {b} gave a flower to",
    "Then, {a} and {b} had a long argument. Afterwards {b} said to",
    "{a} and {b} found a necklace at the beach. {b} gave it to",
    "At the restaurant, {a} and {b} had lunch together, and {b} passed the salt to",
    "After the meeting, {a} and {b} walked home. On the way, {b} gave a book to",
)
IOI_PAIRS_PER_TEMPLATE = 32

STDLIB_MODULES = _words(
    "abc argparse asyncio bisect calendar collections contextlib csv dataclasses datetime decimal difflib "
    "enum fractions functools gzip hashlib heapq http.client inspect ipaddress itertools json logging math "
    "operator os pathlib pickle queue random re sched shlex shutil socket sqlite3 statistics string "
    "subprocess tarfile tempfile textwrap threading typing unittest urllib.parse uuid warnings weakref zipfile "
    "cmd codecs configparser copy doctest email.message fnmatch ftplib glob imaplib locale mailbox optparse "
    "pdb pprint smtplib timeit trace traceback types xml.dom.minidom"
)
STDLIB_MAX_TEXTS = 500
PARAGRAPH_CHARS = (150, 1500)  # shorter is a heading or a signature line; longer is rare and runs past max_tokens


def induction() -> list[str]:
    """Random words (no repeats within a half) followed by the same words again, seeded."""
    rng = random.Random(SEED)
    vocabulary = sorted(set(WORDS))
    out = []
    for _ in range(INDUCTION_TEXTS):
        half = " ".join(rng.sample(vocabulary, INDUCTION_HALF))
        out.append(f"{half} {half}")
    return out


def ioi() -> list[str]:
    """Each template with the same seeded choice of ordered name pairs (so ABBA and BABA both occur)."""
    pairs = [(a, b) for a in PEOPLE for b in PEOPLE if a != b and (a, b) != ("Mary", "John")]
    random.Random(SEED).shuffle(pairs)
    chosen = [("Mary", "John"), *pairs[: IOI_PAIRS_PER_TEMPLATE - 1]]  # the classic example comes first
    return [template.format(a=a, b=b) for template in IOI_TEMPLATES for a, b in chosen]


def stdlib_docs() -> list[str]:
    """Prose paragraphs of standard-library docstrings: modules in a fixed order, members sorted by name."""
    seen: set[str] = set()
    out: list[str] = []
    for doc in _docstrings():
        for block in re.split(r"\n\s*\n", doc):
            paragraph = " ".join(block.split())
            if _is_prose(paragraph) and paragraph not in seen:
                seen.add(paragraph)
                out.append(paragraph)
                if len(out) == STDLIB_MAX_TEXTS:
                    return out
    return out


def _docstrings() -> Iterator[str]:
    for module_name in STDLIB_MODULES:
        module = importlib.import_module(module_name)
        yield _doc(module)
        for _, member in _public(module):
            if getattr(member, "__module__", None) != module.__name__:
                continue  # imported from elsewhere: its own module yields it
            if inspect.isfunction(member):
                yield _doc(member)
            elif inspect.isclass(member):
                yield _doc(member)
                yield from (_doc(method) for _, method in _public(member) if inspect.isfunction(method))


def _public(namespace: object) -> list[tuple[str, object]]:
    return sorted((name, value) for name, value in vars(namespace).items() if not name.startswith("_"))


def _doc(obj: object) -> str:
    doc = getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) else ""  # a few classes have a descriptor here


def _is_prose(paragraph: str) -> bool:
    """Sentences, not code, tables or argument lists: long enough, mostly letters, no doctest prompt."""
    low, high = PARAGRAPH_CHARS
    if not low <= len(paragraph) <= high or ">>>" in paragraph:
        return False
    letters = sum(c.isalpha() or c == " " for c in paragraph)
    return letters >= 0.85 * len(paragraph) and paragraph[0].isupper() and paragraph.endswith(".")


GENERATORS: dict[str, Callable[[], list[str]]] = {
    "builtin:induction": induction,
    "builtin:ioi": ioi,
    "builtin:stdlib-docs": stdlib_docs,
}
IDS = tuple(GENERATORS)
TITLES = {
    "builtin:induction": "Induction: random common words, then the same words again",
    "builtin:ioi": "IOI: indirect-object sentences (templates × name pairs)",
    "builtin:stdlib-docs": "Python standard-library docstrings, split into paragraphs",
}


@functools.cache
def _generated(dataset_id: str) -> tuple[str, ...]:
    return tuple(GENERATORS[dataset_id]())


def texts(dataset_id: str) -> tuple[str, ...]:
    """A built-in set's texts (generated on first use, then cached). KeyError for an unknown id."""
    return _generated(dataset_id)
