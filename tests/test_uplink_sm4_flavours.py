"""SM4 as Shandong and Yunnan use it (uplink.sm4): the cipher is SM4 (the standard's
test vector), and what we send decrypts, with ``cryptography``'s own decryptor here in
the test, to exactly what each platform expects."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st

from uplink.sm4 import (
    SM4Error,
    decrypt_field,
    encrypt_field,
    shandong_key,
    yunnan_block,
    yunnan_password,
    yunnan_pin,
)

VECTOR = "0123456789abcdeffedcba9876543210"
CODE = "91340200MA2N00000T"      # a valid credit code (check character T)
SECRET = "Yn8kQ2pL7xR4tV9wZ3mB"  # a platform secret: only its first 16 characters count


def test_the_cipher_is_sm4_by_the_standards_vector() -> None:
    # GB/T 32907-2016, example 1: key = plaintext = 0123456789abcdeffedcba9876543210.
    # The algorithm the module hands its keys to gives the standard's ciphertext; the
    # tests below decrypt what the module writes with that same algorithm.
    key = shandong_key(VECTOR)
    assert key == bytes.fromhex(VECTOR)
    enc = Cipher(algorithms.SM4(key), modes.ECB()).encryptor()
    assert (enc.update(key) + enc.finalize()).hex() == "681edf34d206965e86b3e94f536e4246"
    # An ASCII field of one block: its first ciphertext block is SM4 of its bytes alone.
    text = "0123456789abcdef"
    enc = Cipher(algorithms.SM4(key), modes.ECB()).encryptor()
    assert encrypt_field(key, text)[:32] == (enc.update(text.encode()) + enc.finalize()).hex()


def test_shandong_field_decrypts_with_cryptography_itself() -> None:
    key = shandong_key("A1B2C3D4E5F60718293A4B5C6D7E8F90")
    for text in ("1234.5", "2024-05-01 00:00:00", "01-00-0000-023300-01", "0", "有效", ""):
        hexed = encrypt_field(key, text)
        assert hexed == hexed.lower() and len(hexed) % 32 == 0
        dec = Cipher(algorithms.SM4(key), modes.ECB()).decryptor()
        padded = dec.update(bytes.fromhex(hexed)) + dec.finalize()
        unpadder = padding.PKCS7(128).unpadder()
        assert (unpadder.update(padded) + unpadder.finalize()).decode() == text
        assert decrypt_field(key, hexed) == text


def test_shandong_field_of_exactly_one_block_gets_a_whole_padding_block() -> None:
    key = shandong_key(VECTOR)
    hexed = encrypt_field(key, "abcdefghijklmnop")  # 16 bytes
    assert len(hexed) == 64  # PKCS#7 always pads: a full block of 0x10


def test_shandong_key_must_be_32_hex_digits() -> None:
    for bad in ("", "0123", VECTOR + "00", "g" * 32, " " + VECTOR[1:]):
        with pytest.raises(ValueError, match="32 hex digits"):
            shandong_key(bad)


def test_a_malformed_field_raises_sm4_error() -> None:
    key = shandong_key(VECTOR)
    good = encrypt_field(key, "42")
    with pytest.raises(SM4Error, match="not a hex string"):
        decrypt_field(key, "zz" + good[2:])
    with pytest.raises(SM4Error, match="whole 16-byte blocks"):
        decrypt_field(key, good[:-2])
    with pytest.raises(SM4Error, match="padding"):
        decrypt_field(shandong_key("ff" * 16), good)  # another key: garbage padding


def test_yunnan_block_for_pin_123456() -> None:
    assert yunnan_block("123456") == b"06123456FFFFFFFF"
    assert yunnan_block("1234") == b"041234FFFFFFFFFF"
    assert yunnan_block("123456789012") == b"12123456789012FF"
    for bad in ("123", "1234567890123", "12a456", "", "１２３４"):
        with pytest.raises(ValueError, match="4 to 12"):
            yunnan_block(bad)


def test_yunnan_password_decrypts_with_cryptography_itself() -> None:
    password = yunnan_password(SECRET, CODE, "123456")
    assert len(password) == 32 and password == password.lower()  # one block, no padding
    key, iv = SECRET[:16].encode(), CODE[:16].encode()
    dec = Cipher(algorithms.SM4(key), modes.CBC(iv)).decryptor()
    assert dec.update(bytes.fromhex(password)) + dec.finalize() == b"06123456FFFFFFFF"
    assert yunnan_pin(SECRET, CODE, password) == "123456"


def test_yunnan_password_uses_only_the_first_16_characters() -> None:
    p = yunnan_password(SECRET, CODE, "123456")
    assert yunnan_password(SECRET[:16] + "anything else", CODE[:16] + "XY", "123456") == p
    assert yunnan_password(SECRET, "91530100MA6K000000", "123456") != p  # another IV


def test_yunnan_password_under_another_secret_is_refused() -> None:
    p = yunnan_password(SECRET, CODE, "123456")
    with pytest.raises(SM4Error):
        yunnan_pin("another-secret-of-16", CODE, p)
    with pytest.raises(SM4Error, match="not a hex string"):
        yunnan_pin(SECRET, CODE, "xyz")
    with pytest.raises(ValueError, match="16 ASCII"):
        yunnan_password("short", CODE, "123456")


@given(st.from_regex(r"[0-9]{4,12}", fullmatch=True))
def test_yunnan_round_trip(pin: str) -> None:
    assert yunnan_pin(SECRET, CODE, yunnan_password(SECRET, CODE, pin)) == pin


@given(st.text(max_size=200))
def test_shandong_round_trip(text: str) -> None:
    key = shandong_key(VECTOR)
    try:
        text.encode()
    except UnicodeEncodeError:
        return  # a lone surrogate is not text a record holds
    assert decrypt_field(key, encrypt_field(key, text)) == text
