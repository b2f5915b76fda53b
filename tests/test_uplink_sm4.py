"""The token flavour's password: SM4 (from the cryptography package) and the ISO 9564
format-0 PIN block, against published and hand-computed values."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st

from ingest.credit_code import ALPHABET, check_character
from tests.test_uplink_support import E1, E2
from uplink.sm4_pin import (
    account_digits,
    decrypt_pin,
    encrypt_pin,
    format0_block,
    parse_format0_block,
    sm4_cbc_decrypt,
    sm4_cbc_encrypt,
)

KEY = bytes.fromhex("0123456789abcdeffedcba9876543210")


def test_sm4_standard_vector() -> None:
    # GB/T 32907-2016 example 1: key = plaintext = 0123456789abcdeffedcba9876543210.
    enc = Cipher(algorithms.SM4(KEY), modes.ECB()).encryptor()
    assert (enc.update(KEY) + enc.finalize()).hex() == "681edf34d206965e86b3e94f536e4246"
    # Our CBC helper with a zero IV: the first block is the same (the second is padding).
    assert sm4_cbc_encrypt(KEY, bytes(16), KEY)[:16].hex() == "681edf34d206965e86b3e94f536e4246"
    assert sm4_cbc_decrypt(KEY, bytes(16), sm4_cbc_encrypt(KEY, bytes(16), KEY)) == KEY


def test_format0_textbook_example() -> None:
    # PIN 1234, card 43219876543210987: the account digits are the 12 rightmost without
    # the check digit, 987654321098.
    #   PIN field      04 12 34 FF FF FF FF FF
    #   account field  00 00 98 76 54 32 10 98
    #   XOR            04 12 AC 89 AB CD EF 67
    assert format0_block("1234", "987654321098").hex().upper() == "0412AC89ABCDEF67"
    assert parse_format0_block(bytes.fromhex("0412AC89ABCDEF67"), "987654321098") == "1234"


def test_format0_from_an_enterprise_code_by_hand() -> None:
    # E1 = 91340100MA2N0C8XB? : the digits of its first 17 characters are 9 1 3 4 0 1 0 0
    # 2 0 8 (eleven), so the account digits are 091340100208.
    assert E1.startswith("91340100MA2N0C8XB")
    assert account_digits(E1) == "091340100208"
    #   PIN 246810     06 24 68 10 FF FF FF FF
    #   account field  00 00 09 13 40 10 02 08
    #   XOR            06 24 61 03 BF EF FD F7
    assert format0_block("246810", account_digits(E1)).hex().upper() == "06246103BFEFFDF7"
    # An all-digit code: the 12 rightmost of its first 17.
    assert account_digits(E2) == "200743082289"


def test_encrypted_pin_is_iv_then_one_sm4_cbc_block() -> None:
    iv = bytes(range(16))
    password = encrypt_pin("246810", E1, KEY, iv)
    raw = bytes.fromhex(password)
    assert len(raw) == 32 and raw[:16] == iv
    # CBC by hand: SM4-ECB(key, (PIN block + PKCS#7 padding) XOR IV).
    padded = bytes.fromhex("06246103BFEFFDF7") + bytes([8] * 8)
    enc = Cipher(algorithms.SM4(KEY), modes.ECB()).encryptor()
    assert raw[16:] == enc.update(bytes(a ^ b for a, b in zip(padded, iv, strict=True))) + enc.finalize()
    assert decrypt_pin(password, E1, KEY) == "246810"


def test_fresh_iv_each_time_and_bound_to_the_enterprise() -> None:
    a, b = encrypt_pin("246810", E1, KEY), encrypt_pin("246810", E1, KEY)
    assert a != b
    assert decrypt_pin(a, E1, KEY) == decrypt_pin(b, E1, KEY) == "246810"
    # The same block read for another enterprise is not the PIN (usually not even a PIN).
    try:
        other = decrypt_pin(a, E2, KEY)
    except ValueError:
        other = None
    assert other != "246810"


@pytest.mark.parametrize("pin", ["123", "1234567890123", "12a4", ""])
def test_pins_must_be_4_to_12_digits(pin: str) -> None:
    with pytest.raises(ValueError):
        format0_block(pin, "000000000000")


_codes = st.text(alphabet=ALPHABET, min_size=17, max_size=17).map(lambda s: s + check_character(s))


@given(pin=st.text(alphabet="0123456789", min_size=4, max_size=12), code=_codes,
       key=st.binary(min_size=16, max_size=16))
def test_round_trip(pin: str, code: str, key: bytes) -> None:
    assert decrypt_pin(encrypt_pin(pin, code, key), code, key) == pin
