#!/usr/bin/env python3
"""Seeded, reproducible English sentence generator for the mini_synth demo corpus.

Sentences come from a small set of templates (home-assistant commands,
alarms/times, dates, digit strings, short descriptive sentences) over a closed
vocabulary of a few hundred words.  Every generated sentence is a list of
lower-case words; :func:`normalize` gives the ASR target (upper case, no
punctuation).

Held-out material (used only for the ``test`` split):

* ``HELDOUT_TEMPLATES``: templates never used outside ``test``;
* ``HELDOUT_ROOM_DEVICE``: (room, device) pairs that never co-occur in a
  sentence outside ``test`` (each word alone is seen).
"""

from __future__ import annotations

import random
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEENS = ["ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
         "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth",
            "tenth", "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth",
            "seventeenth", "eighteenth", "nineteenth", "twentieth", "twenty first",
            "twenty second", "twenty third", "twenty fourth", "twenty fifth", "twenty sixth",
            "twenty seventh", "twenty eighth", "twenty ninth", "thirtieth", "thirty first"]
MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august",
          "september", "october", "november", "december"]
WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
ROOMS = ["kitchen", "bedroom", "bathroom", "garage", "office", "hallway", "garden", "basement",
         "living room", "dining room"]
DEVICES = ["light", "lamp", "fan", "heater", "radio", "television", "speaker", "oven",
           "kettle", "computer"]
OPENABLES = ["window", "door", "blinds", "curtains", "gate"]
NAMES = ["alice", "bob", "carol", "david", "emma", "frank", "grace", "henry", "isabel", "jack",
         "karen", "liam", "maria", "nathan", "olivia", "peter", "rachel", "sam", "tom", "victor"]
CITIES = ["london", "paris", "berlin", "madrid", "boston", "chicago", "tokyo", "sydney",
          "toronto", "dublin", "vienna", "lisbon"]
GENRES = ["jazz", "rock", "classical", "pop", "country", "blues", "folk", "reggae"]
ITEMS = ["apples", "bananas", "oranges", "eggs", "tomatoes", "potatoes", "carrots", "onions",
         "lemons", "cookies", "bottles of milk", "loaves of bread"]
TASKS = ["call the doctor", "pay the rent", "water the plants", "feed the cat", "buy a present",
         "book a table", "clean the car", "send the letter", "walk the dog", "pick up the kids"]
ADJS = ["small", "big", "old", "young", "happy", "quiet", "lazy", "brown", "red", "green",
        "clever", "tired", "hungry", "friendly", "little"]
ANIMALS = ["dog", "cat", "horse", "bird", "fox", "rabbit", "mouse", "cow", "sheep", "duck"]
VERBS = ["jumped over", "ran past", "looked at", "slept near", "walked around", "sat beside",
         "played with", "waited for"]
OBJECTS = ["fence", "table", "tree", "chair", "river", "house", "bridge", "wall", "box", "car"]
COLORS = ["red", "blue", "green", "yellow", "white", "black", "orange", "purple"]
WEATHER = ["sunny", "cloudy", "rainy", "windy", "cold", "warm", "foggy"]


def number_words(n: int) -> str:
    """0 <= n < 100 as words."""
    if n < 10:
        return ONES[n]
    if n < 20:
        return TEENS[n - 10]
    t, o = divmod(n, 10)
    return TENS[t] + ("" if o == 0 else " " + ONES[o])


def plural(w: str) -> str:
    return w + ("es" if w.endswith(("x", "s", "ch", "sh")) else "s")


def time_words(r: random.Random) -> str:
    h = r.randint(1, 12)
    kind = r.randrange(5)
    if kind == 0:
        s = f"{number_words(h)} o clock"
    elif kind == 1:
        s = f"half past {number_words(h)}"
    elif kind == 2:
        s = f"quarter to {number_words(h)}"
    else:
        m = r.choice([5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55])
        s = f"{number_words(h)} {'oh five' if m == 5 else number_words(m)}"
    if r.random() < 0.4:
        s += " in the " + r.choice(["morning", "afternoon", "evening"])
    return s


def date_words(r: random.Random) -> str:
    return f"the {r.choice(ORDINALS)} of {r.choice(MONTHS)}"


def digits_words(r: random.Random, k: int) -> str:
    return " ".join(ONES[r.randrange(10)] for _ in range(k))


# Every template: (name, function(rng, room_device_sampler) -> sentence)
RoomDevice = Callable[[], Tuple[str, str]]


def _t_switch(r, rd):
    room, dev = rd()
    return f"turn {r.choice(['on', 'off'])} the {room} {dev}"


def _t_switch_polite(r, rd):
    room, dev = rd()
    return f"please switch {r.choice(['on', 'off'])} the {dev} in the {room}"


def _t_open(r, rd):
    return f"{r.choice(['open', 'close'])} the {r.choice(ROOMS)} {r.choice(OPENABLES)}"


def _t_temperature(r, rd):
    return f"set the {r.choice(ROOMS)} temperature to {number_words(r.randint(15, 30))} degrees"


def _t_alarm(r, rd):
    return f"set an alarm for {time_words(r)}"


def _t_remind(r, rd):
    return f"remind me to {r.choice(TASKS)} on {date_words(r)}"


def _t_meeting(r, rd):
    return f"the meeting is on {r.choice(WEEKDAYS)} {date_words(r)}"


def _t_weather(r, rd):
    return f"what is the weather in {r.choice(CITIES)} on {r.choice(WEEKDAYS)}"


def _t_call(r, rd):
    return f"call {r.choice(NAMES)} at {time_words(r)}"


def _t_phone(r, rd):
    return f"my number is {digits_words(r, r.randint(4, 7))}"


def _t_music(r, rd):
    return f"play some {r.choice(GENRES)} music in the {r.choice(ROOMS)}"


def _t_shopping(r, rd):
    return f"add {number_words(r.randint(2, 12))} {r.choice(ITEMS)} to my shopping list"


def _t_story(r, rd):
    return (f"the {r.choice(ADJS)} {r.choice(ANIMALS)} {r.choice(VERBS)} "
            f"the {r.choice(ADJS)} {r.choice(OBJECTS)}")


def _t_count(r, rd):
    return f"{r.choice(NAMES)} has {number_words(r.randint(2, 99))} {r.choice(COLORS)} {plural(r.choice(OBJECTS))}"


def _t_sky(r, rd):
    return f"it will be {r.choice(WEATHER)} in {r.choice(CITIES)} {r.choice(['today', 'tomorrow', 'tonight'])}"


# held-out templates: new word orders / phrase combinations built only from words
# that the seen templates also produce (no out-of-vocabulary words in test)
def _t_call_date(r, rd):
    return f"call {r.choice(NAMES)} on {r.choice(WEEKDAYS)} {date_words(r)}"


def _t_weather_date(r, rd):
    return f"what is the weather in {r.choice(CITIES)} on {date_words(r)}"


TEMPLATES: Dict[str, Callable] = {
    "switch": _t_switch, "switch_polite": _t_switch_polite, "open": _t_open,
    "temperature": _t_temperature, "alarm": _t_alarm, "remind": _t_remind,
    "meeting": _t_meeting, "weather": _t_weather, "call": _t_call, "phone": _t_phone,
    "music": _t_music, "shopping": _t_shopping, "story": _t_story, "count": _t_count,
    "sky": _t_sky, "call_date": _t_call_date, "weather_date": _t_weather_date,
}
HELDOUT_TEMPLATES = ("call_date", "weather_date")
SEEN_TEMPLATES = tuple(t for t in TEMPLATES if t not in HELDOUT_TEMPLATES)
# (room, device) pairs that only ever co-occur in test sentences (switch templates)
HELDOUT_ROOM_DEVICE = (("kitchen", "fan"), ("bedroom", "radio"), ("garage", "heater"),
                       ("office", "lamp"), ("living room", "television"), ("bathroom", "speaker"))
ROOM_DEVICE_TEMPLATES = ("switch", "switch_polite")


def normalize(sentence: str) -> str:
    """ASR target: upper-case words, no punctuation, single spaces."""
    return " ".join(re.sub(r"[^a-z' ]", " ", sentence.lower()).replace("'", "").split()).upper()


class TextGenerator:
    """Draws sentences for one split.  ``mode`` is ``seen`` (pretrain/train/dev)
    or ``heldout`` (test: held-out templates / room-device pairs mixed with seen ones)."""

    def __init__(self, rng: random.Random, mode: str = "seen"):
        assert mode in ("seen", "heldout")
        self.r = rng
        self.mode = mode
        self._ho = set(HELDOUT_ROOM_DEVICE)

    def _rd_seen(self) -> Tuple[str, str]:
        while True:
            p = (self.r.choice(ROOMS), self.r.choice(DEVICES))
            if p not in self._ho:
                return p

    def _rd_heldout(self) -> Tuple[str, str]:
        return self.r.choice(HELDOUT_ROOM_DEVICE)

    def sample(self) -> Tuple[str, str, str]:
        """Returns (template, category, sentence); category in
        {seen, heldout_template, heldout_combination}."""
        r = self.r
        if self.mode == "seen":
            t = r.choice(SEEN_TEMPLATES)
            return t, "seen", TEMPLATES[t](r, self._rd_seen)
        u = r.random()
        if u < 0.3:
            t = r.choice(HELDOUT_TEMPLATES)
            return t, "heldout_template", TEMPLATES[t](r, self._rd_seen)
        if u < 0.5:
            t = r.choice(ROOM_DEVICE_TEMPLATES)
            return t, "heldout_combination", TEMPLATES[t](r, self._rd_heldout)
        t = r.choice(SEEN_TEMPLATES)
        return t, "seen", TEMPLATES[t](r, self._rd_seen)


def vocabulary() -> List[str]:
    """All words the templates can produce (sorted, upper case)."""
    words = set()
    lists: Sequence[Sequence[str]] = (ONES, TEENS, TENS, ORDINALS, MONTHS, WEEKDAYS, ROOMS, DEVICES,
                                      OPENABLES, NAMES, CITIES, GENRES, ITEMS, TASKS, ADJS, ANIMALS,
                                      VERBS, OBJECTS, COLORS, WEATHER)
    for lst in lists:
        for w in lst:
            words.update(normalize(w).split())
    words.update(normalize(plural(o)) for o in OBJECTS)
    fixed = ("turn on off the please switch in open close set temperature to degrees an alarm for "
             "o clock half past quarter morning afternoon evening remind me meeting is what weather "
             "call at my number play some music add shopping list has it will be today tomorrow "
             "tonight oh")
    words.update(normalize(fixed).split())
    return sorted(words)


if __name__ == "__main__":
    g = TextGenerator(random.Random(0), "heldout")
    for _ in range(15):
        t, c, s = g.sample()
        print(f"{t:14s} {c:20s} {normalize(s)}")
    print(len(vocabulary()), "words")
