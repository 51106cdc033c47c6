"""The rewriting rules of ``normalize``: money, dates, times, numbers, abbreviations and symbols in words.

Order matters: money and dates before bare numbers (``$3.50`` is not "three point five zero"), times
before numbers, abbreviations after numbers (``No. 5``). Each rule is a regex and a function of its match.
"""
from __future__ import annotations

import re

from .numbers import cardinal, decimal, digits, ordinal, plural, year

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
_MONTH_ABBR = {"Jan": 1, "Feb": 2, "Mar": 3, "Apr": 4, "Jun": 6, "Jul": 7, "Aug": 8, "Sep": 9, "Sept": 9,
               "Oct": 10, "Nov": 11, "Dec": 12}
_MONTH_RE = "|".join([*MONTHS, *(rf"{a}\." for a in _MONTH_ABBR)])
#: titles before a name: never the end of a sentence
TITLES = {"Dr": "Doctor", "Mr": "Mister", "Mrs": "Missus", "Ms": "Miz", "Prof": "Professor",
          "Gen": "General", "Capt": "Captain", "Lt": "Lieutenant", "Col": "Colonel", "Sgt": "Sergeant",
          "Rev": "Reverend", "Gov": "Governor", "Sen": "Senator", "Rep": "Representative", "Mt": "Mount",
          "Hon": "Honorable", "Pres": "President", "Supt": "Superintendent"}
#: abbreviations that may close a sentence: the period is kept when a new sentence follows
ENDINGS = {"etc": "et cetera", "Inc": "Incorporated", "Ltd": "Limited", "Co": "Company", "Corp": "Corporation",
           "Jr": "Junior", "Sr": "Senior", "Ave": "Avenue", "Blvd": "Boulevard", "Rd": "Road", "Dept": "Department",
           "Univ": "University", "approx": "approximately", "vs": "versus", "min": "minutes", "hrs": "hours"}
_CURRENCY = {"$": ("dollar", "dollars", "cent", "cents"), "£": ("pound", "pounds", "penny", "pence"),
             "€": ("euro", "euros", "cent", "cents"), "¥": ("yen", "yen", "sen", "sen")}
_SCALE = r"(?:thousand|million|billion|trillion)"
UNITS = {"km": "kilometers", "kg": "kilograms", "cm": "centimeters", "mm": "millimeters", "mg": "milligrams",
         "ml": "milliliters", "mph": "miles per hour", "kph": "kilometers per hour", "ft": "feet",
         "lb": "pounds", "lbs": "pounds", "oz": "ounces", "mi": "miles", "GB": "gigabytes", "MB": "megabytes",
         "KB": "kilobytes", "TB": "terabytes", "kHz": "kilohertz", "Hz": "hertz", "MHz": "megahertz",
         "GHz": "gigahertz", "kW": "kilowatts", "°C": "degrees Celsius", "°F": "degrees Fahrenheit",
         "°": "degrees"}
_SINGULAR_UNITS = {"feet": "foot", "miles per hour": "mile per hour", "kilometers per hour": "kilometer per hour"}
_SYMBOLS = {"&": " and ", "+": " plus ", "=": " equals ", "@": " at ", "%": " percent ", "#": " number ",
            "°": " degrees ", "×": " times ", "½": " and a half ", "¼": " and a quarter "}
_NUM = r"\d{1,3}(?:,\d{3})+|\d+"


def _int(s: str) -> int:
    return int(s.replace(",", ""))


def _number(s: str) -> str:
    """A number as written: leading zeros digit by digit, decimals with "point", else the cardinal."""
    if "." in s:
        return decimal(s)
    if len(s) > 1 and s.startswith("0"):
        return digits(s)
    return cardinal(_int(s))


def _money(m: re.Match) -> str:
    one, many, sub_one, sub_many = _CURRENCY[m["sym"]]
    whole, frac, scale = m["whole"], m["frac"], m["scale"]
    if scale:
        return f" {_number(whole + ('.' + frac if frac else ''))} {scale} {many} "
    n = _int(whole) if whole else 0
    parts = [f"{cardinal(n)} {one if n == 1 else many}"] if n or not frac else []
    if frac:
        cents = int((frac + "0")[:2])
        if cents or not parts:
            parts.append(f"{cardinal(cents)} {sub_one if cents == 1 else sub_many}")
    return " " + " and ".join(parts) + " "


def _month_day(month: str, day: str, yr: str | None, of_form: bool = False) -> str:
    month = MONTHS[_MONTH_ABBR[month.rstrip(".")] - 1] if month.rstrip(".") in _MONTH_ABBR else month
    said = f"the {ordinal(int(day))} of {month}" if of_form else f"{month} {ordinal(int(day))}"
    return f"{said}{', ' if yr and not of_form else ' ' if yr else ''}{year(int(yr)) if yr else ''}"


def _numeric_date(m: re.Match) -> str:
    if m["iso"]:
        y, mo, d = int(m["iy"]), int(m["im"]), int(m["id"])
    else:
        mo, d, y = int(m["um"]), int(m["ud"]), int(m["uy"])
        y += 2000 if y < 100 and y < 50 else 1900 if y < 100 else 0
    if not (1 <= mo <= 12 and 1 <= d <= 31):
        return m[0].replace("/", " slash ").replace("-", " ")
    return f"{MONTHS[mo - 1]} {ordinal(d)}, {year(y)}"


def _time(m: re.Match) -> str:
    h, mi = int(m["h"]), int(m["m"])
    suffix = m["ampm"]
    if h > 24 or mi > 59:
        return f"{cardinal(h)} {cardinal(mi)}"
    said = cardinal(h)
    if mi == 0:
        said += "" if suffix else " o'clock"
    else:
        said += f" oh {cardinal(mi)}" if mi < 10 else f" {cardinal(mi)}"
    if suffix:
        said += " " + " ".join(c for c in suffix.lower() if c.isalpha())
        if suffix.endswith(".") and m["after"] is not None:
            said += "."
    return f" {said} "


def _unit(m: re.Match) -> str:
    words = UNITS[m["unit"]]
    if m["num"] in ("1", "1.0"):
        words = _SINGULAR_UNITS.get(words, words[:-1] if words.endswith("s") else words)
    return f"{m['num']} {words}"


def _abbrev(table: dict[str, str], keep_period: bool):
    def sub(m: re.Match) -> str:
        word = table[m["w"]]
        if keep_period and re.match(r"\s*(?:$|[\"']?[A-Z])", m.string[m.end():]):
            word += "."
        return word
    return sub


def _street_or_saint(m: re.Match) -> str:
    before = m.string[:m.start()].split()
    after = m.string[m.end():]
    if before and before[-1][:1].isupper() and before[-1].isalpha():
        return "Street." if re.match(r"\s*(?:$|[A-Z])", after) else "Street"
    return "Saint" if re.match(r"\s*[A-Z]", after) else "Street"


def _fraction(m: re.Match) -> str:
    """"1/2" -> "one half", "2 3/4" -> "two and three quarters", "5/8" -> "five eighths"."""
    n, d = int(m["n"]), int(m["d"])
    if d < 2 or n == 0:
        return m[0].replace("/", " ").replace("\u2044", " ")
    name = {2: "half", 4: "quarter"}.get(d) or ordinal(d)
    if n > 1:
        name = "halves" if d == 2 else plural(name) if name.endswith("y") else name + "s"
    said = f"{cardinal(n)} {name}"
    return f" {cardinal(int(m['whole']))} and {said} " if m["whole"] else f" {said} "


def _decade(m: re.Match) -> str:
    """"1990s" -> "nineteen nineties", "'80s" -> "eighties", "1900s" -> "nineteen hundreds"."""
    return plural(year(int(m["c"] + m["d"])) if m["c"] else cardinal(int(m["d"])))


def _time_hour(m: re.Match) -> str:
    """"5 p.m." -> "five p m" (a time with no minutes)."""
    said = f"{cardinal(int(m['h']))} {' '.join(c for c in m['ampm'].lower() if c.isalpha())}"
    return f" {said}{'.' if m['ampm'].endswith('.') and m['after'] is not None else ''} "


RULES: list[tuple[re.Pattern, object]] = [
    (re.compile(r"(?P<sym>[$£€¥])\s?(?=\.?\d)(?P<whole>\d{1,3}(?:,\d{3})+|\d+|)(?:\.(?P<frac>\d+))?"
                rf"(?:\s(?P<scale>{_SCALE}))?\b"), _money),
    (re.compile(r"\b(?:(?P<iso>(?P<iy>\d{4})-(?P<im>\d{1,2})-(?P<id>\d{1,2}))|"
                r"(?P<um>\d{1,2})/(?P<ud>\d{1,2})/(?P<uy>\d{4}|\d{2}))\b"), _numeric_date),
    (re.compile(rf"\b(?P<mon>{_MONTH_RE})\s(?P<day>\d{{1,2}})(?:st|nd|rd|th)?\b(?:,?\s(?P<yr>\d{{4}})\b)?"),
     lambda m: _month_day(m["mon"], m["day"], m["yr"])),
    (re.compile(rf"(?:\b(?P<the>[Tt]he)\s)?\b(?P<day>\d{{1,2}})(?:st|nd|rd|th)?\s(?:of\s)?(?P<mon>{'|'.join(MONTHS)})\b"
                r"(?:,?\s(?P<yr>\d{4})\b)?"),
     lambda m: (m["the"] or "the") + _month_day(m["mon"], m["day"], m["yr"], of_form=True)[3:]),
    (re.compile(r"\b(?P<h>\d{1,2}):(?P<m>\d{2})(?::\d{2})?(?:\s?(?P<ampm>[AaPp]\.?[Mm]\.?)(?=\W|$))?"
                r"(?P<after>(?=\s*(?:$|[A-Z])))?"), _time),
    (re.compile(r"\b(?P<h>\d{1,2})\s?(?P<ampm>[AaPp]\.[Mm]\.|[AaPp][Mm]\b)(?P<after>(?=\s*(?:$|[A-Z])))?"),
     _time_hour),
    (re.compile(r"\b(?P<n>\d+)(?P<suf>st|nd|rd|th)\b"), lambda m: ordinal(int(m["n"]))),
    (re.compile(r"(?:\b(?P<c>\d{2})|')(?P<d>\d0)'?s\b"), _decade),
    (re.compile(r"(?:\b(?P<whole>\d+)\s)?\b(?P<n>\d{1,2})[/\u2044](?P<d>\d{1,2})\b(?![/\u2044])"), _fraction),
    (re.compile(r"\b\d+(?:\.\d+){2,}\b"), lambda m: " point ".join(_number(p) for p in m[0].split("."))),
    (re.compile(r"(?<=[A-Za-z])(?=\d)"), lambda m: " "),  # B12, MP3: letters then a number
    (re.compile(r"(?P<num>\d+(?:\.\d+)?)\s?(?P<unit>°[CF]|km|kg|cm|mm|mg|ml|mph|kph|ft|lbs?|oz|mi|[KMGT]B|"
                r"[kMG]?Hz|kW)(?![A-Za-z])"), _unit),
    (re.compile(r"(?<![\d-])(?:\d{3}-)?\d{3}-\d{4}\b"), lambda m: ", ".join(digits(g) for g in m[0].split("-"))),
    (re.compile(r"\b(?P<a>\d+)\s?(?:-|to)\s?(?P<b>\d+)\b(?![-/:.]\d)"),
     lambda m: f"{m['a']} to {m['b']}" if int(m["a"]) < int(m["b"]) else m[0]),
    (re.compile(r"(?<=\d)(?=[A-Za-z])"), lambda m: " "),  # 3D, 4K: what no rule above read
    (re.compile(r"\bNo\.(?=\s?\d)"), lambda m: "number"),
    (re.compile(r"(?<![\w.])-(?=\d)"), lambda m: "minus "),
    (re.compile(rf"\b(?:{_NUM})\.\d+\b"), lambda m: decimal(m[0])),
    (re.compile(r"\b[12]\d{3}\b(?!,\d)"), lambda m: year(int(m[0]))),
    (re.compile(rf"\b(?:{_NUM})\b"), lambda m: _number(m[0])),
    (re.compile(r"\bSt\.(?=\s|$)"), _street_or_saint),
    (re.compile(rf"\b(?P<w>{'|'.join(TITLES)})\.(?=\s)"), _abbrev(TITLES, keep_period=False)),
    (re.compile(rf"\b(?P<w>{'|'.join(ENDINGS)})\.(?=\s|$|[,;:)])"), _abbrev(ENDINGS, keep_period=True)),
    (re.compile(r"\b[eE]\.g\.(?=[\s,]|$)"), lambda m: "for example"),
    (re.compile(r"\b[iI]\.e\.(?=[\s,]|$)"), lambda m: "that is"),
    (re.compile(rf"\b(?P<mon>{'|'.join(_MONTH_ABBR)})\.(?=\s)"), lambda m: MONTHS[_MONTH_ABBR[m["mon"]] - 1]),
    (re.compile(r"[&+=@%#°×½¼]"), lambda m: _SYMBOLS[m[0]]),
    (re.compile(r"(?<=[A-Za-z])/(?=[A-Za-z])"), lambda m: " "),  # and/or -> and or
    (re.compile(r"(?<=[A-Za-z])\.(?=[A-Za-z]{2,})"), lambda m: " dot "),  # example.com
]


def expand(text: str) -> str:
    """Every rule of ``RULES`` applied in turn."""
    for pattern, fn in RULES:
        text = pattern.sub(fn, text)
    return text
