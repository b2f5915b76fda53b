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
``POST /gaugeConfigure``   ``{enterpriseCode, operation: add|update|delete,
                           dataIndex, data: {instrument}}``: add answers
                           ``data.dataIndex``; update and delete must quote one of
                           the enterprise's
``POST /gaugeVerifyConfigure``   ``{enterpriseCode, dataIndex, data: {serNo,
                           alignState, lastAlignDate, nextAlignDate, ...}}``
``POST /gaugeReplaceConfigure``  ``{enterpriseCode, dataIndex, data: {serNo,
                           oldSerNo, dataCode, replaceTime, oldFinalValue,
                           newInitialValue}}``
=========================  ========================================================

The instrument calls' layout is our reading of an unpublished interface (the field
names are the platform's); the same bearer token as data.

Success is ``"200"`` on every call.  A wrong password answers HTTP 401 with
responseCode ``"401"`` and 密码错误 (what live platforms answer is not published), an
enterprise without a PIN here responseCode ``"404"``.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from aiohttp import web

from tools.platform.checks import check_gauge, check_replacement, check_verification
from tools.platform.state import Handler, Platform, bad, enterprise_of, reply
from uplink.sm4 import yunnan_pin

__all__ = ["Yunnan"]


class Yunnan:
    success = "200"

    def __init__(self, platform: Platform) -> None:
        self.p = platform

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [("/requestAK", "register", self.request_ak), (f"/{self.p.data_path}", "data", self.data),
                ("/gaugeConfigure", "gauge", self.gauge),
                ("/gaugeVerifyConfigure", "gauge_verify", self.verification),
                ("/gaugeReplaceConfigure", "gauge_replace", self.replacement)]

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

    def _holder(self, request: web.Request, body: dict[str, Any]) -> str | web.Response:
        """The enterprise whose good token the request carries, or the 401 refusing it."""
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        holder = self.p.state.tokens.get(token)
        if holder is None or holder[0] != body.get("enterpriseCode") or self.p.clock() >= holder[1]:
            return reply("401", "token missing, expired or not this enterprise's", status=401)
        return holder[0]

    async def data(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        if isinstance(enterprise := self._holder(request, body), web.Response):
            return enterprise
        records: Any = body.get("data")
        if (refused := self.p.data_problem(records)) is not None:
            return refused
        return self.p.accept(enterprise, records)

    def _refused(self, data: Any) -> web.Response | None:
        ser_no = data.get("serNo") if isinstance(data, dict) else None
        if ser_no in self.p.mode.reject_meters:
            return bad(f"serNo {ser_no} refused by the platform (injected)")
        return None

    def _known(self, enterprise: str, body: dict[str, Any]) -> str | web.Response:
        """The dataIndex the call quotes, when it is one of the enterprise's instruments."""
        index = body.get("dataIndex")
        if not isinstance(index, str) or index not in self.p.state.gauges.get(enterprise, {}):
            return bad(f"dataIndex {index!r} is not one of {enterprise}'s instruments")
        return index

    async def gauge(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        if isinstance(enterprise := self._holder(request, body), web.Response):
            return enterprise
        data, op = body.get("data"), body.get("operation")
        if op not in ("add", "update", "delete"):
            return bad(f"operation {op!r} is not add, update or delete")
        if (problem := check_gauge(data)) is not None:
            return bad(f"data: {problem}")
        if (refused := self._refused(data)) is not None:
            return refused
        assert isinstance(data, dict)  # checked above
        st = self.p.state
        held = st.gauges.setdefault(enterprise, {})
        if op == "add":
            added = st.new_index()
            held[added] = data
            st.meter_call("gauge", enterprise, body, data)
            return self.p.ok(data={"dataIndex": added})
        known = self._known(enterprise, body)
        if isinstance(known, web.Response):
            return known
        index = known
        if held[index]["serNo"] != data["serNo"]:
            return bad(f"dataIndex {index} is instrument {held[index]['serNo']}, not {data['serNo']}")
        if op == "update":
            held[index] = data
        else:
            del held[index]
        st.meter_call("gauge", enterprise, body, data)
        return self.p.ok()

    async def _period_call(self, request: web.Request, body: dict[str, Any], call: str) -> web.Response:
        if isinstance(enterprise := self._holder(request, body), web.Response):
            return enterprise
        data = body.get("data")
        check = check_verification if call == "gauge_verify" else check_replacement
        if (problem := check(data)) is not None:
            return bad(f"data: {problem}")
        if (refused := self._refused(data)) is not None:
            return refused
        if isinstance(known := self._known(enterprise, body), web.Response):
            return known
        self.p.state.meter_call(call, enterprise, body, data)
        return self.p.ok()

    async def verification(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        return await self._period_call(request, body, "gauge_verify")

    async def replacement(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        return await self._period_call(request, body, "gauge_replace")
