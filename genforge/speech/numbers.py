"""English words for numbers: cardinals, ordinals, years, decimals, as a reader says them aloud.

Our own few functions rather than a num2words dependency: the front end needs only American English,
and the year and digit-by-digit rules are the ones LJSpeech-style normalisers use.
"""
from __future__ import annotations

ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
        "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
SCALES = [(10 ** 12, "trillion"), (10 ** 9, "billion"), (10 ** 6, "million"), (1000, "thousand")]
#: irregular ordinal endings; every other word takes "th" (with twenty -> twentieth)
_ORDINAL = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
            "nine": "ninth", "twelve": "twelfth"}
#: beyond this a number is read digit by digit (a phone number or an ID, not a quantity)
MAX_CARDINAL = 10 ** 15 - 1


def _below_thousand(n: int) -> str:
    words = []
    if n >= 100:
        words.append(f"{ONES[n // 100]} hundred")
        n %= 100
    if n >= 20:
        words.append(TENS[n // 10] + (f"-{ONES[n % 10]}" if n % 10 else ""))
    elif n or not words:
        words.append(ONES[n])
    return " ".join(words)


def digits(s: str) -> str:
    """``"2048"`` -> ``"two zero four eight"``."""
    return " ".join(ONES[int(c)] for c in s if c.isdigit())


def cardinal(n: int) -> str:
    """``1234`` -> ``"one thousand two hundred thirty-four"``; negatives say "minus"."""
    if n < 0:
        return "minus " + cardinal(-n)
    if n > MAX_CARDINAL:
        return digits(str(n))
    if n < 1000:
        return _below_thousand(n)
    words = []
    for value, name in SCALES:
        if n >= value:
            words.append(f"{_below_thousand(n // value)} {name}")
            n %= value
    if n:
        words.append(_below_thousand(n))
    return " ".join(words)


def ordinal_word(words: str) -> str:
    """The ordinal of a cardinal's words: ``"twenty-one"`` -> ``"twenty-first"``."""
    head, sep, last = words.rpartition(" ")
    pre, dash, tail = last.rpartition("-")
    if tail in _ORDINAL:
        tail = _ORDINAL[tail]
    elif tail.endswith("y"):
        tail = tail[:-1] + "ieth"
    else:
        tail += "th"
    return head + sep + pre + dash + tail


def ordinal(n: int) -> str:
    """``21`` -> ``"twenty-first"``."""
    return ordinal_word(cardinal(n))


def year(n: int) -> str:
    """How a year is read: 1999 -> nineteen ninety-nine, 1900 -> nineteen hundred, 2005 -> two thousand
    five, 2010 -> twenty ten; outside 1000..2999 (and for x000) the plain cardinal."""
    if not 1000 <= n <= 2999 or n % 1000 == 0:
        return cardinal(n)
    if 2000 < n < 2010:
        return cardinal(n)
    hi, lo = divmod(n, 100)
    if lo == 0:
        return f"{cardinal(hi)} hundred"
    return f"{cardinal(hi)} {'oh ' + ONES[lo] if lo < 10 else cardinal(lo)}"


def decimal(text: str) -> str:
    """``"3.14"`` -> ``"three point one four"``; ``"0.5"`` -> ``"zero point five"``; commas in the whole
    part are thousands separators."""
    whole, _, frac = text.replace(",", "").partition(".")
    out = cardinal(int(whole)) if whole else "zero"
    return f"{out} point {digits(frac)}" if frac else out


def plural(words: str) -> str:
    """The plural of a number's words (decades: "nineteen nineties", "the twenties")."""
    if words.endswith("y"):
        return words[:-1] + "ies"
    if words.endswith("x"):
        return words + "es"
    return words + "s"
