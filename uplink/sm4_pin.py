"""The removed token flavour's password: an ISO 9564-1 format-0 PIN block, SM4-CBC encrypted.

No adapter uses it any more; it stays only while the mock platform's old ``/token``
endpoint imports it, and goes when the mock speaks ``yunnan``.

Why format 0: it is the PIN block Chinese payment terminals and HSMs build before
encrypting with SM4 (the ANSI X9.8 block the vendors' SDKs carry over), and it binds
the PIN to an account number so a block captured for one enterprise does not decrypt
to a usable PIN for another.  Format 4 (the 16-byte block ISO defined for AES) would
fill an SM4 block exactly, but no platform we know asks for it.

The block (8 bytes) is ``PIN field XOR account field``:

- PIN field: nibble 0 (the format), nibble N (PIN length, 4 to 12), the PIN digits,
  then nibbles F up to 16 nibbles.
- account field: four 0 nibbles, then 12 account digits.  A bank derives these from
  the card number (its 12 rightmost digits without the check digit); an enterprise has
  no card, so we take the 12 rightmost decimal digits among the first 17 characters
  of its unified social credit code (the 18th is a check character, like the card's
  Luhn digit), left-padded with zeros when the code has fewer digits.

SM4 has 16-byte blocks: the 8-byte PIN block is PKCS#7 padded to one block and
encrypted in CBC mode under the platform's key with a fresh random IV; what travels
is ``hex(IV || ciphertext)`` (64 hex digits).  The cipher is the ``cryptography``
package's SM4 (OpenSSL's implementation), never our own.
"""

from __future__ import annotations

import os
import re

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "account_digits",
    "decrypt_pin",
    "encrypt_pin",
    "format0_block",
    "parse_format0_block",
    "sm4_cbc_decrypt",
    "sm4_cbc_encrypt",
]

_PIN = re.compile(r"^\d{4,12}$")
_BLOCK = 16  # SM4 block size in bytes


def _pin_field(pin: str) -> bytes:
    if not _PIN.match(pin):
        raise ValueError("a PIN is 4 to 12 decimal digits")
    nibbles = f"0{len(pin):X}{pin}".ljust(16, "F")
    return bytes.fromhex(nibbles)


def _account_field(account12: str) -> bytes:
    if not re.fullmatch(r"\d{12}", account12):
        raise ValueError("the account part is exactly 12 decimal digits")
    return bytes.fromhex("0000" + account12)


def account_digits(enterprise_code: str) -> str:
    """The 12 account digits for an enterprise (see the module docstring)."""
    digits = "".join(c for c in enterprise_code[:17] if c.isdigit())
    return digits[-12:].rjust(12, "0")


def format0_block(pin: str, account12: str) -> bytes:
    """ISO 9564-1 format 0: the PIN field XOR the account field (8 bytes)."""
    return bytes(a ^ b for a, b in zip(_pin_field(pin), _account_field(account12), strict=True))


def parse_format0_block(block: bytes, account12: str) -> str:
    """The PIN inside a format-0 block; ValueError when the block is not well formed."""
    if len(block) != 8:
        raise ValueError("a format-0 PIN block is 8 bytes")
    field = bytes(a ^ b for a, b in zip(block, _account_field(account12), strict=True)).hex().upper()
    if field[0] != "0":
        raise ValueError("not a format-0 PIN block")
    n = int(field[1], 16)
    pin, fill = field[2 : 2 + n], field[2 + n :]
    if not 4 <= n <= 12 or not pin.isdigit() or set(fill) != {"F"}:
        raise ValueError("malformed PIN field")
    return pin


def sm4_cbc_encrypt(key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    """SM4-CBC with PKCS#7 padding."""
    padder = padding.PKCS7(_BLOCK * 8).padder()
    data = padder.update(plaintext) + padder.finalize()
    enc = Cipher(algorithms.SM4(key), modes.CBC(iv)).encryptor()
    return enc.update(data) + enc.finalize()


def sm4_cbc_decrypt(key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    """Inverse of :func:`sm4_cbc_encrypt`; ValueError on bad padding."""
    dec = Cipher(algorithms.SM4(key), modes.CBC(iv)).decryptor()
    data = dec.update(ciphertext) + dec.finalize()
    unpadder = padding.PKCS7(_BLOCK * 8).unpadder()
    return unpadder.update(data) + unpadder.finalize()


def encrypt_pin(pin: str, enterprise_code: str, key: bytes, iv: bytes | None = None) -> str:
    """What the token request carries as ``password``: hex(IV || SM4-CBC(format-0 block))."""
    iv = os.urandom(_BLOCK) if iv is None else iv
    if len(key) != _BLOCK or len(iv) != _BLOCK:
        raise ValueError("SM4 key and IV are 16 bytes")
    block = format0_block(pin, account_digits(enterprise_code))
    return (iv + sm4_cbc_encrypt(key, iv, block)).hex()


def decrypt_pin(password_hex: str, enterprise_code: str, key: bytes) -> str:
    """The platform side of :func:`encrypt_pin`; ValueError when it does not decode."""
    raw = bytes.fromhex(password_hex)
    if len(raw) != 2 * _BLOCK:
        raise ValueError("expected 32 bytes: IV and one SM4 block")
    block = sm4_cbc_decrypt(key, raw[:_BLOCK], raw[_BLOCK:])
    return parse_format0_block(block, account_digits(enterprise_code))
