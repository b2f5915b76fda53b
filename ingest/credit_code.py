"""GB 32100 unified social credit codes (统一社会信用代码): 18 characters, the last a check
character computed modulo 31 over the first 17."""

from __future__ import annotations

__all__ = ["ALPHABET", "check_character", "checked", "is_valid"]

ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"  # no I, O, S, V, Z
_VALUE = {c: i for i, c in enumerate(ALPHABET)}
_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)


def check_character(first17: str) -> str:
    """The check character for the first 17 characters (which must be in ALPHABET)."""
    if len(first17) != 17:
        raise ValueError("need exactly 17 characters")
    total = sum(_VALUE[c] * w for c, w in zip(first17, _WEIGHTS, strict=True))
    return ALPHABET[(31 - total % 31) % 31]


def is_valid(code: str) -> bool:
    """True when code is 18 characters of the alphabet with the right check character."""
    if len(code) != 18 or any(c not in _VALUE for c in code):
        return False
    return check_character(code[:17]) == code[17]


def checked(code: str) -> str:
    """``code`` when it is valid; else ValueError saying so (for the items and enterprise
    models' validators, whose messages name the field)."""
    if not is_valid(code):
        raise ValueError("not a GB 32100 credit code (18 characters with a valid check character)")
    return code
