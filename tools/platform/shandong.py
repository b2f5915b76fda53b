"""The mock platform speaking Shandong's variant of the reference interface.

=================================  ================================================
``POST /enterprise/register``      ``{enterpriseCode, region}`` -> deviceId,
                                   centerDataURL, loadDicVersionURL, download URLs,
                                   uploadTime and a ``secretKey`` (32 hex digits);
                                   no centerInfoURL
``POST /enterprise/uploadData``    ``{deviceId, enterpriseCode, data: [record]}``, one
                                   record whose every field is SM4-ECB encrypted hex
``POST /enterprise/dicVersion``    ``{deviceId}`` -> regVersion, dicVersion
=================================  ================================================

Each enterprise keeps the key its first registration gave until the control API
rotates it; a field that does not decrypt under the enterprise's current key (another
key, malformed hex) answers ``{"responseCode": "1", "responseMessage": "解密失败！"}``.
"""

from __future__ import annotations

import secrets
from typing import Any

from aiohttp import web

from tools.platform.gbt37947 import check_region
from tools.platform.state import (
    DECRYPT_FAILED,
    FAILURE_CODE,
    Handler,
    Platform,
    bad,
    dictionary_reply,
    enterprise_of,
    reply,
)
from uplink.sm4 import SM4Error, decrypt_field

__all__ = ["Shandong", "typed_record"]

_INTS = ("inputType", "statType", "scope")


def typed_record(fields: dict[str, str]) -> dict[str, Any]:
    """A decrypted record's texts as the values they spell (ValueError when one does not)."""
    rec: dict[str, Any] = dict(fields)
    if "dataValue" in rec:
        rec["dataValue"] = float(rec["dataValue"])
    for name in _INTS:
        if name in rec:
            rec[name] = int(rec[name])
    if rec.get("valid") in ("true", "false"):
        rec["valid"] = rec["valid"] == "true"
    return rec


class Shandong:
    success = "0"

    def __init__(self, platform: Platform) -> None:
        self.p = platform

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [("/enterprise/register", "register", self.register),
                ("/enterprise/uploadData", "data", self.data),
                ("/enterprise/dicVersion", "dictionary", self.dictionary)]

    async def register(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        if isinstance(enterprise := enterprise_of(body), web.Response):
            return enterprise
        if (problem := check_region(body)) is not None:
            return bad(problem)
        st = self.p.state
        if enterprise not in st.keys:
            st.keys[enterprise] = secrets.token_bytes(16)
            st.keys_issued += 1
        base = f"{request.scheme}://{request.host}"
        return self.p.ok(deviceId=self.p.device_of(enterprise), uploadTime=self.p.mode.upload_time,
                         centerDataURL=f"{base}/enterprise/uploadData",
                         loadDicVersionURL=f"{base}/enterprise/dicVersion",
                         centerInfoDownloadURL=f"{base}/enterprise/download/config",
                         downloadBaseDataURL=f"{base}/enterprise/download/base",
                         secretKey=st.keys[enterprise].hex())

    async def dictionary(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        return dictionary_reply(self.p, body)

    async def data(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        if (refused := self.p.device_problem(body)) is not None:
            return refused
        enterprise = body["enterpriseCode"]
        records: Any = body.get("data")
        if not isinstance(records, list) or len(records) != 1 or not isinstance(records[0], dict):
            return bad("data is not a list of one record")
        key = self.p.state.keys[enterprise]
        try:
            fields = {name: decrypt_field(key, value) for name, value in records[0].items()}
        except (SM4Error, ValueError, TypeError):  # TypeError: a field that is not a string
            return reply(FAILURE_CODE, DECRYPT_FAILED)
        try:
            rec = typed_record(fields)
        except ValueError as exc:
            return bad(f"data[0]: {exc}")
        if (refused := self.p.data_problem([rec], most=1)) is not None:
            return refused
        return self.p.accept(enterprise, [rec])
