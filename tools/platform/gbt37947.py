"""The mock platform speaking GB/T 37947.1 as Anhui and the provinces that follow the
reference interface deploy it.

=============================  ====================================================
``POST /register``             ``{enterpriseCode, region}`` -> deviceId, uploadTime and
                               every URL: centerInfoURL, centerDataURL,
                               loadDicVersionURL, centerMeteringDataUrl, download URLs
``POST /config``               item configuration (centerInfoURL): the ``enterprise``
                               profile and each item's code parts are checked
``POST /dicVersion``           ``{deviceId}`` -> regVersion, dicVersion (set through
                               the control API)
``POST /data``                 a batch of records (centerDataURL)
``POST /metering``             measuring instruments (centerMeteringDataUrl): ``{enterpriseCode,
                               deviceId, data: [instrument]}``, each checked and held by
                               serNo; answers a ``dataIndex`` (one instrument per call)
                               or a list ``dataIndexes``; the register reply leaves the
                               URL out when the control API says ``metering_url: false``
``POST /download/config``      download URLs: an empty list
``POST /download/base``
=============================  ====================================================
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tools.platform.checks import check_config_item, check_gauge, check_profile
from tools.platform.state import Handler, Platform, bad, dictionary_reply, enterprise_of, reply

__all__ = ["Gbt37947", "check_region"]


def check_region(body: dict[str, Any]) -> str | None:
    region = body.get("region")
    if not isinstance(region, str) or len(region) != 6 or not region.isdigit():
        return f"region {region!r} is not a 6-digit administrative code"
    return None


class Gbt37947:
    success = "0"

    def __init__(self, platform: Platform) -> None:
        self.p = platform

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [("/register", "register", self.register), ("/config", "config", self.config),
                ("/dicVersion", "dictionary", self.dictionary), ("/data", "data", self.data),
                ("/metering", "metering", self.metering), ("/download/config", "download", self.download),
                ("/download/base", "download", self.download)]

    async def register(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        if isinstance(enterprise := enterprise_of(body), web.Response):
            return enterprise
        if (problem := check_region(body)) is not None:
            return bad(problem)
        base = f"{request.scheme}://{request.host}"
        metering = {"centerMeteringDataUrl": f"{base}/metering"} if self.p.mode.metering_url else {}
        return self.p.ok(deviceId=self.p.device_of(enterprise), uploadTime=self.p.mode.upload_time,
                         centerInfoURL=f"{base}/config", centerDataURL=f"{base}/data",
                         loadDicVersionURL=f"{base}/dicVersion", **metering,
                         centerInfoDownloadURL=f"{base}/download/config",
                         downloadBaseDataURL=f"{base}/download/base")

    async def config(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        if (refused := self.p.device_problem(body)) is not None:
            return refused
        enterprise = body["enterpriseCode"]
        if (problem := check_profile(body.get("enterprise"), enterprise)) is not None:
            return bad(problem)
        items = body.get("collectItemConfig")
        if not isinstance(items, list) or not items:
            return bad("collectItemConfig is not a non-empty list")
        for i, item in enumerate(items):
            if (problem := check_config_item(item, parts=True)) is not None:
                return bad(f"collectItemConfig[{i}]: {problem}")
        self.p.state.configured[enterprise] = {it["dataCode"] for it in items}
        self.p.state.configs[enterprise] = {"enterprise": body["enterprise"], "collectItemConfig": items}
        self.p.state.config_uploads += 1
        return self.p.ok()

    async def dictionary(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        return dictionary_reply(self.p, body)

    async def data(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        if (refused := self.p.device_problem(body)) is not None:
            return refused
        records: Any = body.get("data")
        if (refused := self.p.data_problem(records)) is not None:
            return refused
        enterprise = body["enterpriseCode"]
        configured = self.p.state.configured.get(enterprise, set())
        for i, rec in enumerate(records):
            if rec["dataCode"] not in configured:
                return reply("3", f"data[{i}]: dataCode {rec['dataCode']} is not configured")
        return self.p.accept(enterprise, records)

    async def metering(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        if (refused := self.p.device_problem(body)) is not None:
            return refused
        data = body.get("data")
        if not isinstance(data, list) or not data:
            return bad("data is not a non-empty list of instruments")
        for i, obj in enumerate(data):
            if (problem := check_gauge(obj)) is not None:
                return bad(f"data[{i}]: {problem}")
            if obj["serNo"] in self.p.mode.reject_meters:
                return bad(f"data[{i}]: serNo {obj['serNo']} refused by the platform (injected)")
        st, enterprise = self.p.state, body["enterpriseCode"]
        held = st.gauges.setdefault(enterprise, {})
        indexes = []
        for obj in data:
            # One index per instrument, kept across resends of the same serial number.
            index = next((i for i, g in held.items() if g["serNo"] == obj["serNo"]), None) or st.new_index()
            held[index] = obj
            indexes.append(index)
            st.meter_call("metering", enterprise, body, obj)
        return self.p.ok(dataIndex=indexes[0]) if len(indexes) == 1 else self.p.ok(dataIndexes=indexes)

    async def download(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        return self.p.ok(data=[])
