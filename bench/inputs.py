"""Benchmark inputs: natural English prose repeated and cut to an exact number of tokens."""

from __future__ import annotations

from typing import Any

PROSE = """\
The river rises in the hills north of the town, where the snow lies late into spring. For most of the year
it is a narrow stream that a child could wade across, but in April the meltwater turns it brown and fast, and
the old stone bridge at the mill sometimes disappears under the flood. The people who live along its banks
have learned to keep their boats tied high and their cellars empty until the water goes down again.

In the town itself the market opens at dawn on Tuesdays and Saturdays. Farmers bring eggs, cheese, honey and
whatever vegetables the season allows; a baker from the next valley sells bread that is gone before nine
o'clock. The square is paved with cobbles that were laid more than two hundred years ago, and the fountain in
its centre still runs, although nobody remembers who built it or why the lion on top has only one ear.

The school stands at the top of the hill, next to the church. Its teacher, a patient woman who has taught three
generations of the same families, begins each morning by reading aloud from a book of old stories. The children
listen, then argue about the endings, then go outside to measure the shadow of the church tower so that they can
work out the time without a clock. In winter they count the birds that come to the feeder by the window and keep
a record that now fills eleven notebooks.

Scientists who study language models often ask which parts of a network are responsible for a particular
behaviour. An attention head, for example, may learn to look at the previous token, to copy a name that appeared
earlier in the text, or to spread its attention evenly as a kind of resting state. By switching a head off and
watching how the predictions change, one can estimate how much the model depends on it, although heads rarely
act alone and the effect of removing two heads is not simply the sum of removing each.
"""


def token_ids(tokenizer: Any, n: int) -> list[int]:
    """Exactly `n` token ids of the prose, repeated as often as needed."""
    ids: list[int] = tokenizer(PROSE)["input_ids"]
    reps = n // len(ids) + 1
    return (ids * reps)[:n]


def text_of(tokenizer: Any, n: int) -> str:
    """A text that the tokenizer turns into exactly `n` tokens (for endpoints that take text)."""
    ids = token_ids(tokenizer, n + 8)
    for cut in range(n, n + 8):
        text: str = tokenizer.decode(ids[:cut])
        if len(tokenizer(text)["input_ids"]) == n:
            return text
    for cut in range(n - 1, max(n - 16, 0), -1):
        text = tokenizer.decode(ids[:cut])
        if len(tokenizer(text)["input_ids"]) == n:
            return text
    raise ValueError(f"no cut of the prose gives exactly {n} tokens")
