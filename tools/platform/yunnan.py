"""The mock platform speaking Yunnan's token scheme.

=========================  ========================================================
``POST /requestAK``        ``{enterpriseCode, password}``: the password must decrypt
                           (:func:`uplink.sm4.yunnan_pin`, the platform's secret and
                           the credit code) to the enterprise's PIN; answers
                           ``{responseCode "200", data: {token, akExpiresIn,
                           akValidAt, enterpriseUploadTime, platformURL}}``
``POST /{data_path}``      ``{enterpriseCode, data: [records]}`` with
                           ``Authorization: Bearer <token>``; HTTP 401 for a token
                           missing, expired or another enterprise's
=========================  ========================================================

Success is ``"200"`` on every call.  A wrong password answers HTTP 401 with
responseCode ``"401"`` and 密码错误 (what live platforms answer is not published), an
enterprise without a PIN here responseCode ``"404"``.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from aiohttp import web

from tools.platform.state import Handler, Platform, enterprise_of, reply
from uplink.sm4 import yunnan_pin

__all__ = ["Yunnan"]


class Yunnan:
    success = "200"

    def __init__(self, platform: Platform) -> None:
        self.p = platform

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [("/requestAK", "register", self.request_ak), (f"/{self.p.data_path}", "data", self.data)]

    async def request_ak(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        if isinstance(enterprise := enterprise_of(body), web.Response):
            return enterprise
        pin = self.p.pins.get(enterprise, self.p.pin)
        if pin is None:
            return reply("404", f"企业 {enterprise} 未注册")
        try:
            given = yunnan_pin(self.p.secret, enterprise, str(body.get("password", "")))
        except ValueError:  # SM4Error: not a PIN block under this secret and credit code
            given = None
        if given is None or not secrets.compare_digest(given, pin):
            return reply("401", "密码错误", status=401)
        st, ttl = self.p.state, self.p.mode.token_ttl_s
        token = secrets.token_hex(16)
        st.tokens[token] = (enterprise, self.p.clock() + ttl)
        st.tokens_issued += 1
        valid_at = datetime.now().strftime("%Y-%m-%d %H:%M:%S 000")
        return self.p.ok(data={"token": token, "akExpiresIn": ttl, "akValidAt": valid_at,
                               "enterpriseUploadTime": self.p.mode.upload_time, "platformURL": ""})

    async def data(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        holder = self.p.state.tokens.get(token)
        if holder is None or holder[0] != body.get("enterpriseCode") or self.p.clock() >= holder[1]:
            return reply("401", "token missing, expired or not this enterprise's", status=401)
        enterprise = holder[0]
        records: Any = body.get("data")
        if (refused := self.p.data_problem(records)) is not None:
            return refused
        return self.p.accept(enterprise, records)
