"""Strings that break tokenizers: the cases a core-op WordPiece must get right."""

from __future__ import annotations

import random

# Each names what it tests; the generated ones below mix these classes at random.
HAND_WRITTEN = (
    "",
    " ",
    "\t\n  \r\f",
    "\u00a0nbsp\u00a0inside",  # no-break space: not RE2's \s, NFKC-folded to a space
    "\u3000ideographic space",
    "zero\u200bwidth\u200djoiner\ufeffbom\u00adsoft-hyphen",  # \p{Cf}: split
    "\u0000nul first",
    "before\u0000after",  # TF-Text's regex_split ends the string at a NUL
    "\u0001\u007f\u0085control",
    "\u202eright-to-left\u202c",
    "caf\u00e9 cafe\u0301 CAF\u00c9 CAFE\u0301",  # composed and decomposed accents
    "a\u0323\u0302 a\u0302\u0323 q\u0323\u0307 \u1e9b\u0323",  # marks to reorder, then compose
    "\u0041\u030a\u0301 \u0344 \u0308\u0301",  # a composition exclusion, a lone mark
    "\u1100\u1161\u11a8 \u1112\u1161\u11ab \uac00\u11a8",  # conjoining jamo compose to syllables
    "\ud55c\uad6d\uc5b4 \u115f\u1160",  # Hangul syllables, and fillers NFKC_Casefold removes
    "\u0b47\u0b3e \u0915\u093c \u0dd9\u0dcf",  # Indic vowel signs that compose with ccc 0
    "a\u034fb \u034f",  # combining grapheme joiner: a mark that case folding removes
    "Stra\u00dfe \u0130stanbul \u01c5ungla \u03a3\u0391\u03a3 \ufb00 \ufb03 \ufb01ne",
    "\u2474\u2460 \u00bd \u2122 \u2f00\u2fd5",  # NFKC: (1), 1, 1/2, tm, Kangxi radicals
    "\uff21\uff22\uff23\uff01 \uff48\uff45\uff4c\uff4c\uff4f",  # full-width forms
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \u4e2d\u6587",  # CJK split per ideograph
    "\U00020000\U0002a6df\uf900 \u3400x\u4dbf",  # CJK extension and compatibility blocks
    "\U0001f600\U0001f44d\U0001f3fd emoji \u2764\ufe0f \U0001f468\u200d\U0001f469",
    "Hello, World!! (ok) [x] {y} #tag @me ^caret `tick` ~tilde $5 5% 1,000.50",
    "don't won't it's \u2018quoted\u2019 \u201cdouble\u201d \u2014 dash \u2026",
    "a" * 100,  # the longest word WordPiece tries
    "a" * 101,  # one byte past it: the unknown token
    "\u00e9" * 50,  # 100 bytes in 50 characters
    "\u00e9" * 51,
    "x" * 99 + "\u00e9",  # 101 bytes
    "antidisestablishmentarianism supercalifragilisticexpialidocious",
    "word " * 400,  # far past any sequence length
    "\U0001d400\U0001d401 \U0001d7ce\U0001d7cf",  # mathematical alphanumerics fold to ASCII
    "\u2e60\u2e61 \u2e62",  # punctuation newer than some Unicode tables
)

_MARKS = [
    chr(c)
    for start, stop in (
        (0x300, 0x370),
        (0x483, 0x48A),
        (0x591, 0x5C8),
        (0x610, 0x61B),
        (0x93C, 0x94E),
        (0x1AB0, 0x1ACF),
        (0x1DC0, 0x1E00),
        (0x20D0, 0x20F1),
        (0xFE20, 0xFE30),
        (0x302A, 0x3030),
        (0x1D165, 0x1D16A),
    )
    for c in range(start, stop)
]
_BASES = (
    list("aeiouyncszAEIOUNCSZ")
    + [chr(c) for c in range(0x391, 0x3AA)]
    + [chr(c) for c in range(0x410, 0x450)]
    + ["\u0b47", "\u0bc6", "\u0cc6", "\u0d46", "\u1b05", "\u0915", "\u3046", "\u30a6"]
)
_JAMO = [chr(c) for c in [*range(0x1100, 0x1113), *range(0x1161, 0x1176), *range(0x11A8, 0x11C3)]]
_SECOND_STARTERS = [  # ccc 0, yet composing with the character before
    chr(c) for c in (0x0B3E, 0x0B56, 0x0B57, 0x0BBE, 0x0BD7, 0x0CC2, 0x0CD5, 0x0CD6, 0x0D3E,
                     0x0D57, 0x0DCF, 0x0DDF, 0x102E, 0x1B35, 0x3099, 0x309A)
]  # fmt: skip
_BLOCKS = [
    [chr(c) for c in range(start, stop)]
    for start, stop in (
        (0x20, 0x7F),
        (0xA0, 0x250),
        (0x370, 0x530),
        (0x900, 0x980),
        (0x1100, 0x1200),
        (0xAC00, 0xAD90),
        (0x2000, 0x2070),
        (0x2100, 0x2500),
        (0x3000, 0x3100),
        (0x4E00, 0x4F2C),
        (0xFB00, 0xFB50),
        (0xFE00, 0xFFF0),
        (0x1F300, 0x1F700),
        (0x1D400, 0x1D800),
    )
] + [[" "] * 20, ["\u00a0", "\u2003", "\u200b", "\u200d", "\u00ad", "\ufeff", "\u0000"]]


def adversarial_strings(count: int = 4000, seed: int = 0) -> list[str]:
    """`HAND_WRITTEN`, then random strings from the classes above: a base with
    stacked marks, jamo runs, mixed Unicode blocks, any code point at all."""
    rng = random.Random(seed)
    strings = list(HAND_WRITTEN)
    while len(strings) < count:
        kind = len(strings) % 4
        if kind == 0:
            strings.append(
                "".join(
                    rng.choice(_BASES)
                    + "".join(
                        rng.choice(_MARKS + _SECOND_STARTERS) for _ in range(rng.randrange(4))
                    )
                    for _ in range(rng.randrange(1, 12))
                )
            )
        elif kind == 1:
            strings.append(
                "".join(rng.choice(_JAMO + _BASES + [" "]) for _ in range(rng.randrange(1, 30)))
            )
        elif kind == 2:
            blocks = rng.sample(_BLOCKS, 3)
            length = rng.choice([1, 2, 5, 20, 80, 300])
            strings.append("".join(rng.choice(rng.choice(blocks)) for _ in range(length)))
        else:
            code_points = (rng.randrange(0x110000) for _ in range(rng.randrange(1, 40)))
            strings.append("".join(chr(c) for c in code_points if not 0xD800 <= c < 0xE000))
    return strings
