"""SM4 as the provincial platforms use it.  The cipher is the ``cryptography`` package's
SM4 (OpenSSL's implementation), never our own; this module only arranges keys, blocks
and hex the way each platform expects.

Shandong encrypts every field of a data record on its own: SM4 in ECB mode with PKCS#7
padding over the field's text, keyed by the 16 bytes that the ``secretKey`` of its
register reply spells in hex, written as lowercase hex (:func:`encrypt_field`).

Yunnan asks for a password when it hands out a token: a 16-character block made of the
PIN's length in two digits, the PIN and ``F`` up to 16 characters, encrypted with SM4
in CBC mode without padding, the key being the first 16 characters of the secret the
platform issued and the IV the first 16 characters of the enterprise's credit code,
written as hex (:func:`yunnan_password`).

The inverse functions serve the mock platform and the tests.
"""

from __future__ import annotations

import re

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "BLOCK",
    "SM4Error",
    "decrypt_field",
    "encrypt_field",
    "shandong_key",
    "yunnan_block",
    "yunnan_password",
    "yunnan_pin",
]

BLOCK = 16  # SM4's block and key size, in bytes
_HEX32 = re.compile(r"[0-9a-fA-F]{32}")
_PIN = re.compile(r"[0-9]{4,12}")  # ASCII digits only: \d would take any script's digits


class SM4Error(ValueError):
    """A ciphertext that cannot be decrypted as the scheme writes it: not hex, not whole
    blocks, wrong padding, or not text.  The message never quotes the data or a key."""


def shandong_key(secret_key_hex: str) -> bytes:
    """The 16 bytes that Shandong's ``secretKey`` (32 hex digits) spells."""
    if not isinstance(secret_key_hex, str) or not _HEX32.fullmatch(secret_key_hex):
        raise ValueError("the secretKey is not 32 hex digits")
    return bytes.fromhex(secret_key_hex)


def _key(key: bytes) -> algorithms.SM4:
    if len(key) != BLOCK:
        raise ValueError(f"an SM4 key is {BLOCK} bytes, not {len(key)}")
    return algorithms.SM4(key)


def encrypt_field(key: bytes, text: str) -> str:
    """One field as Shandong wants it: SM4-ECB over the UTF-8 text, PKCS#7, lowercase hex."""
    padder = padding.PKCS7(BLOCK * 8).padder()
    data = padder.update(text.encode()) + padder.finalize()
    enc = Cipher(_key(key), modes.ECB()).encryptor()  # ECB: the platform's scheme, not our choice
    return (enc.update(data) + enc.finalize()).hex()


def _blocks(ciphertext_hex: str) -> bytes:
    try:
        data = bytes.fromhex(ciphertext_hex)
    except (ValueError, TypeError):
        raise SM4Error("the ciphertext is not a hex string") from None
    if not data or len(data) % BLOCK:
        raise SM4Error(f"the ciphertext is not whole {BLOCK}-byte blocks")
    return data


def decrypt_field(key: bytes, ciphertext_hex: str) -> str:
    """The text :func:`encrypt_field` encrypted; SM4Error when it is not such a field
    (the platform's 解密失败)."""
    data = _blocks(ciphertext_hex)
    dec = Cipher(_key(key), modes.ECB()).decryptor()
    plain = dec.update(data) + dec.finalize()
    unpadder = padding.PKCS7(BLOCK * 8).unpadder()
    try:
        raw = unpadder.update(plain) + unpadder.finalize()
    except ValueError:
        raise SM4Error("the padding is wrong (another key, or not PKCS#7)") from None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise SM4Error("the plaintext is not UTF-8 text") from None


def yunnan_block(pin: str) -> bytes:
    """The 16 ASCII characters Yunnan encrypts: PIN length in two digits, the PIN, then
    ``F`` (PIN 123456 gives ``06123456FFFFFFFF``)."""
    if not isinstance(pin, str) or not _PIN.fullmatch(pin):
        raise ValueError("a PIN is 4 to 12 decimal digits")
    return f"{len(pin):02d}{pin}".ljust(BLOCK, "F").encode("ascii")


def _yunnan_cipher(secret: str, credit_code: str) -> Cipher[modes.CBC]:
    if not secret.isascii() or len(secret) < BLOCK:
        raise ValueError(f"the Yunnan secret must have at least {BLOCK} ASCII characters")
    if not credit_code.isascii() or len(credit_code) < BLOCK:
        raise ValueError(f"the credit code must have at least {BLOCK} ASCII characters")
    key = secret[:BLOCK].encode("ascii")
    iv = credit_code[:BLOCK].encode("ascii")
    return Cipher(algorithms.SM4(key), modes.CBC(iv))


def yunnan_password(secret: str, credit_code: str, pin: str) -> str:
    """The ``password`` of Yunnan's token request, as hex (32 digits, lowercase)."""
    enc = _yunnan_cipher(secret, credit_code).encryptor()
    return (enc.update(yunnan_block(pin)) + enc.finalize()).hex()


def yunnan_pin(secret: str, credit_code: str, password_hex: str) -> str:
    """The PIN a Yunnan ``password`` carries; SM4Error when it does not decrypt to a
    well-formed block under this secret and credit code."""
    data = _blocks(password_hex)
    if len(data) != BLOCK:
        raise SM4Error(f"the password is not one {BLOCK}-byte block")
    dec = _yunnan_cipher(secret, credit_code).decryptor()
    block = dec.update(data) + dec.finalize()
    m = re.fullmatch(rb"([0-9]{2})([0-9]{4,12})(F*)", block)
    if m is None or int(m.group(1)) != len(m.group(2)):
        raise SM4Error("the password does not decrypt to a PIN block (another secret or credit code)")
    return m.group(2).decode("ascii")
