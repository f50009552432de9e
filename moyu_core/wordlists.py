"""Prompts for the explorer: example prompts, the seeded random word list (the paper's Figure 2
control for semantic-irrelevant inertia) and long reference prose from the standard library."""
from __future__ import annotations

import random

# Common English words, fixed here so a seed gives the same list on every machine.
WORDS: tuple[str, ...] = tuple("""
apple river stone window garden silver market winter bottle candle forest letter mirror pocket
ladder rabbit violin castle anchor basket blanket bridge camera carpet cloud copper cotton desert
engine feather finger flower glass hammer harbor helmet island jacket kettle lemon marble meadow
needle ocean orange paper pencil pepper pillow planet pocket puzzle rocket saddle shadow shovel
signal spider spoon statue sugar summer table ticket tiger tomato tower tunnel valley wagon wallet
whistle wizard yellow zebra arrow beach bread brick butter cabin chair cheese circle clock coffee
corner crown dragon drum eagle earth fabric fence field flame frost ghost giant grape hill horse
jungle kitten lamp leaf lion magnet maple monkey moon mountain music nest night noodle oak onion
paint palace parrot pearl piano pirate plate pond potato queen radio rain ribbon ring robot rose
salt sand school seed sheep ship shoe silk snow soap soup star storm string sun sword tea thunder
tooth train tree trumpet umbrella village wave whale wheel wind wolf wood wool yard blue green
purple quiet loud bright dark happy sleepy heavy light rapid slow gentle brave clever tiny huge
ancient modern frozen golden hollow narrow smooth rough sweet bitter salty empty crowded distant
eager fancy fragile honest humble jolly lively lonely lucky mellow noble odd polite proud rare
shiny silent simple steady strange sturdy tender vivid warm wild young run jump swim climb dance
sing paint build carry catch draw drive eat fly follow gather hide kick laugh listen melt open
push read ride sail shout sleep smile spin throw travel wander whisper write seven twelve forty
hundred first second half double single north south east west above below inside outside across
""".split())

EXAMPLE_PROMPTS: dict[str, str] = {
    "Sentence": "The quick brown fox jumps over the lazy dog while the farmer watches from the porch.",
    "Story": ("Once upon a time, in a small village by the sea, there lived an old fisherman who "
              "talked to the gulls every morning before he set out in his boat."),
    "Python code": "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "Facts": "Paris is the capital of France. Berlin is the capital of Germany. Rome is the capital of",
    "Repetition": "red green blue red green blue red green blue red green blue red green blue",
}


def random_word_list(n: int = 30, seed: int = 0) -> str:
    """`n` words drawn (without replacement while possible) from WORDS by a seeded generator."""
    if n < 1:
        raise ValueError("n must be at least 1")
    rng = random.Random(seed)
    words = list(dict.fromkeys(WORDS))
    out: list[str] = []
    while len(out) < n:
        out += rng.sample(words, min(len(words), n - len(out)))
    return " ".join(out)


def reference_text(n_chars: int = 6000, start: int = 0) -> str:
    """English reference prose from `pydoc_data.topics` (every Python has it), `n_chars` long."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))
    return text[start:start + n_chars]
