"""Static tables behind the simulated pilot enterprises: regions, energy kinds, industries.

Everything here is data, kept apart from the generation logic in :mod:`tools.sim.enterprises`
so it reads like the reference tables it stands for.  Region codes are real prefecture-level
administrative codes of Anhui (the province with 30-odd pilot enterprises);
energy codes and coefficients are those of the national energy statistics catalogue.  Collection classes and equipment-type codes
are this simulator's own convention (documented in docs/simulator.md): nhjc stores codes as
given and never interprets those two parts.
"""

from __future__ import annotations

from dataclasses import dataclass

from processing.coefficients import coefficient_for

__all__ = [
    "CLASS_CONSUMED", "CLASS_INSTANT", "CLASS_PLANT", "ENERGIES", "EQUIPMENT_TYPES",
    "INDUSTRIES", "REGIONS", "TRADE_NAMES", "Energy", "Equipment", "Industry", "Process",
]

# Collection class, the two digits in front of the energy code (cc in cceeee).
CLASS_PLANT = "01"     # energy entering the enterprise, measured at its boundary (scope 1)
CLASS_CONSUMED = "02"  # energy consumed by a process, unit or piece of equipment (scope 2-4)
CLASS_INSTANT = "03"   # an instantaneous quantity (power, flow) at the same measuring point

REGIONS: dict[str, str] = {
    "340100": "合肥", "340200": "芜湖", "340300": "蚌埠", "340400": "淮南",
    "340500": "马鞍山", "340600": "淮北", "340700": "铜陵", "340800": "安庆",
    "341000": "黄山", "341100": "滁州", "341200": "阜阳", "341300": "宿州",
    "341500": "六安", "341600": "亳州", "341700": "池州", "341800": "宣城",
}

# Trade names for company names: {city}{trade}{industry suffix}.
TRADE_NAMES = (
    "皖江", "江淮", "淮河", "徽商", "巢湖", "庐阳", "长江", "黄山", "大别山", "新安",
    "金鼎", "恒信", "华源", "宏达", "鑫泰", "国祯", "海螺", "荣达", "天润", "中联",
    "瑞丰", "万方", "同创", "兴业", "永盛", "嘉禾", "德隆", "九华", "皖北", "东方",
    "龙湖", "凤阳", "淝水", "紫蓬", "敬亭", "天柱", "八公山", "相山", "琅琊", "齐云",
)


@dataclass(frozen=True, slots=True)
class Energy:
    """How one energy kind is metered: the register's unit, wrap and multiplier habits."""

    key: str
    code: str              # 4-digit energy code of the national catalogue
    name: str              # Chinese name used in item names
    unit: str              # the item's unit (after the multiplier)
    coefficient: float | None  # sent as the item's coefficient override, when DOMAIN's
    #                            default for the code would be wrong for this unit
    rollover: float        # register wrap value
    decimals: int          # digits the register shows after the point
    multiplier: float      # register unit -> item unit (CT/PT ratios are chosen per meter)
    flow_unit: str | None  # unit of the matching instant item (None: no instant item)
    season: str            # seasonal pattern key (tools.sim.load)

    @property
    def kgce(self) -> float:
        """kgce per unit, for sizing plants: what nhjc itself will use (0 for water)."""
        return coefficient_for(self.code, self.coefficient) or 0.0


ENERGIES: dict[str, Energy] = {e.key: e for e in (
    # Electricity: 8-digit registers (6 + 2 decimals); the multiplier is the CT x PT ratio.
    Energy("elec", "3300", "电", "kWh", None, 999999.99, 2, 1, "kW", "cooling"),
    # Natural gas: flow computers total in m3 with one decimal.
    Energy("gas", "1500", "天然气", "m3", None, 99999999.9, 1, 1, "m3/h", "heating"),
    # Purchased heat: heat meters register GJ; multiplier 1000 gives the MJ the platforms count heat in.
    Energy("heat", "3200", "热力", "MJ", None, 999999.99, 2, 1000, None, "heating"),
    # Steam is heat (3200) metered in tonnes: low-pressure saturated steam carries about
    # 3.76 GJ/t, i.e. 128.4 kgce/t, so the item carries that coefficient explicitly.
    Energy("steam", "3200", "蒸汽", "t", 128.4, 9999999.99, 2, 1, "t/h", "heating"),
    # Raw coal on belt scales that total tonnes; multiplier 1000 gives kg.
    Energy("coal", "0100", "原煤", "kg", None, 99999999.9, 1, 1000, None, "flat"),
    Energy("coke", "0900", "焦炭", "kg", None, 99999999.9, 1, 1000, None, "flat"),
    # Water is no energy kind: the energy table has no code for it.  It gets 9900, outside
    # the energy codes, and no coefficient: nhjc then gives it no kgce and leaves it out of
    # the enterprise total (a coefficient of 0 would put its coverage into the total's).
    Energy("water", "9900", "新水", "m3", None, 99999.99, 2, 1, None, "cooling"),
)}

# Equipment-type codes (the "ee" of eeee; the other two digits number the equipment).
EQUIPMENT_TYPES: dict[str, str] = {
    "10": "风机", "11": "水泵", "12": "空压机", "13": "锅炉", "14": "工业炉窑",
    "15": "磨机", "16": "压缩机", "17": "电炉", "18": "制冷机组", "19": "电机",
}


@dataclass(frozen=True, slots=True)
class Equipment:
    type: str    # EQUIPMENT_TYPES key
    name: str
    energy: str  # ENERGIES key


@dataclass(frozen=True, slots=True)
class Process:
    name: str
    energies: tuple[str, ...]
    units: tuple[str, ...] = ()
    equipment: tuple[Equipment, ...] = ()
    profile: str | None = None  # None: the industry's profile
    auxiliary: bool = False     # 公辅: utilities and offices, partly non-production use


@dataclass(frozen=True, slots=True)
class Industry:
    key: str
    suffix: str                         # company-name suffix
    regions: tuple[str, ...]            # where such plants are
    tce: tuple[float, float]            # annual consumption range, tce (log-uniform)
    mix: dict[str, float]               # share of kgce by energy key
    profile: str                        # load profile of production
    processes: tuple[Process, ...]
    water_per_tce: float = 3.0          # m3 of fresh water per tce, for sizing


def _eq(t: str, name: str, energy: str = "elec") -> Equipment:
    return Equipment(t, name, energy)


_UTILITIES = Process(
    "公辅", ("elec", "water"), ("空压站", "水泵房", "办公楼"),
    (_eq("12", "空压机"), _eq("11", "循环水泵")), auxiliary=True,
)

INDUSTRIES: tuple[Industry, ...] = (
    Industry("steel", "钢铁有限公司", ("340500", "340100", "340200"), (3e5, 3e6),
             {"coke": 0.45, "coal": 0.15, "elec": 0.25, "gas": 0.1, "steam": 0.05},
             "continuous", (
                 Process("烧结", ("elec", "coke", "gas"), ("1#烧结机", "2#烧结机"),
                         (_eq("10", "主抽风机"), _eq("14", "点火炉", "gas"))),
                 Process("炼铁", ("elec", "coke", "coal", "steam"), ("1#高炉", "2#高炉"),
                         (_eq("10", "鼓风机"), _eq("14", "热风炉", "gas"))),
                 Process("炼钢", ("elec", "gas", "steam"), ("1#转炉", "1#电炉"),
                         (_eq("17", "电弧炉"), _eq("10", "除尘风机"))),
                 Process("轧钢", ("elec", "gas", "water"), ("热轧", "冷轧"),
                         (_eq("14", "加热炉", "gas"), _eq("19", "主电机"))),
                 _UTILITIES,
             ), water_per_tce=4.0),
    Industry("cement", "水泥有限公司", ("340200", "341700", "340800", "341800"), (5e4, 5e5),
             {"coal": 0.8, "elec": 0.2}, "continuous", (
                 Process("生料制备", ("elec",), ("1#生料磨",),
                         (_eq("15", "立磨"), _eq("10", "循环风机")), profile="tou"),
                 Process("熟料烧成", ("elec", "coal"), ("1#回转窑", "2#回转窑"),
                         (_eq("10", "高温风机"), _eq("14", "分解炉", "coal"))),
                 Process("水泥粉磨", ("elec",), ("1#水泥磨", "2#水泥磨"),
                         (_eq("15", "辊压机"), _eq("10", "选粉风机")), profile="tou"),
                 _UTILITIES,
             ), water_per_tce=0.8),
    Industry("chemical", "化工股份有限公司", ("340400", "340800"), (1e5, 1e6),
             {"coal": 0.6, "elec": 0.2, "gas": 0.1, "steam": 0.1}, "continuous", (
                 Process("造气", ("coal", "elec", "steam"), ("1#气化炉", "2#气化炉"),
                         (_eq("10", "鼓风机"),)),
                 Process("合成", ("elec", "steam"), ("合成氨", "甲醇"),
                         (_eq("16", "合成气压缩机"), _eq("11", "循环泵"))),
                 Process("精馏", ("steam", "elec", "gas"), ("1#精馏塔",),
                         (_eq("11", "回流泵"),)),
                 _UTILITIES,
             ), water_per_tce=6.0),
    Industry("copper", "有色金属有限公司", ("340700",), (1e5, 6e5),
             {"coal": 0.3, "elec": 0.5, "gas": 0.2}, "continuous", (
                 Process("熔炼", ("coal", "elec", "gas"), ("闪速炉",),
                         (_eq("10", "工艺风机"), _eq("16", "制氧机"))),
                 Process("吹炼", ("elec", "gas"), ("1#转炉", "2#转炉"), (_eq("10", "送风机"),)),
                 Process("电解", ("elec", "steam"), ("1#电解槽系列", "2#电解槽系列"),
                         (_eq("19", "整流机组"),)),
                 _UTILITIES,
             ), water_per_tce=5.0),
    Industry("glass", "玻璃有限公司", ("340300", "341100"), (3e4, 3e5),
             {"gas": 0.75, "elec": 0.25}, "continuous", (
                 Process("配料", ("elec",), (), (_eq("19", "混合机"),)),
                 Process("熔化", ("gas", "elec"), ("1#熔窑", "2#熔窑"),
                         (_eq("17", "电助熔"), _eq("10", "助燃风机"))),
                 Process("成型退火", ("elec", "gas"), ("锡槽", "退火窑"), (_eq("10", "冷却风机"),)),
                 Process("深加工", ("elec",), (), (_eq("14", "钢化炉"),), profile="two_shift"),
                 _UTILITIES,
             )),
    Industry("auto", "汽车有限公司", ("340100", "340200"), (1e4, 8e4),
             {"elec": 0.65, "gas": 0.2, "heat": 0.15}, "two_shift", (
                 Process("冲压", ("elec",), ("1#冲压线", "2#冲压线"), (_eq("19", "压力机"),)),
                 Process("焊装", ("elec",), ("焊装车间",), (_eq("19", "焊接机器人"),)),
                 Process("涂装", ("elec", "gas", "heat", "water"), ("前处理", "烘干"),
                         (_eq("14", "烘干炉", "gas"), _eq("10", "送排风机"))),
                 Process("总装", ("elec",), ("总装车间",), ()),
                 _UTILITIES,
             )),
    Industry("paper", "纸业有限公司", ("341800", "341300"), (3e4, 3e5),
             {"coal": 0.5, "elec": 0.3, "steam": 0.2}, "continuous", (
                 Process("制浆", ("elec", "steam"), ("化机浆",), (_eq("15", "磨浆机"),)),
                 Process("抄纸", ("elec", "steam"), ("1#纸机", "2#纸机"),
                         (_eq("11", "真空泵"), _eq("19", "烘缸传动"))),
                 Process("自备锅炉", ("coal", "elec"), ("1#锅炉",), (_eq("13", "锅炉", "coal"),)),
                 _UTILITIES,
             ), water_per_tce=15.0),
    Industry("textile", "纺织有限公司", ("341200", "340300", "341500"), (1e4, 6e4),
             {"elec": 0.8, "steam": 0.2}, "continuous", (
                 Process("纺纱", ("elec",), ("细纱车间", "络筒车间"), (_eq("19", "细纱机"),)),
                 Process("织造", ("elec",), ("喷气织机",), (_eq("12", "空压机"),)),
                 Process("印染", ("steam", "elec", "water"), ("染色", "定型"),
                         (_eq("14", "定型机", "steam"),)),
                 _UTILITIES,
             ), water_per_tce=20.0),
    Industry("brewery", "酒业股份有限公司", ("341600", "341200"), (1e4, 8e4),
             {"elec": 0.35, "heat": 0.4, "gas": 0.25}, "two_shift", (
                 Process("制曲", ("elec",), ("曲房",), (_eq("10", "通风机"),), profile="continuous"),
                 Process("酿造", ("heat", "elec", "water"), ("酿造一车间", "酿造二车间"),
                         (_eq("11", "冷却水泵"),), profile="continuous"),
                 Process("灌装", ("elec", "gas"), ("1#灌装线",), (_eq("14", "洗瓶机", "gas"),)),
                 _UTILITIES,
             ), water_per_tce=12.0),
    Industry("appliance", "电器有限公司", ("340100", "341100"), (1e4, 5e4),
             {"elec": 0.85, "gas": 0.15}, "two_shift", (
                 Process("注塑", ("elec",), ("注塑车间",), (_eq("19", "注塑机"),)),
                 Process("钣金", ("elec", "gas"), ("钣金车间",), (_eq("14", "喷涂烘道", "gas"),)),
                 Process("总装", ("elec",), ("1#总装线", "2#总装线"), ()),
                 _UTILITIES,
             )),
    Industry("mining", "煤业有限责任公司", ("340400", "340600", "341300"), (3e4, 2e5),
             {"elec": 0.8, "coal": 0.2}, "continuous", (
                 Process("提升", ("elec",), ("主井", "副井"), (_eq("19", "提升机"),)),
                 Process("通风", ("elec",), (), (_eq("10", "主通风机"),)),
                 Process("排水", ("elec",), (), (_eq("11", "主排水泵"),)),
                 Process("洗选", ("elec", "water"), ("选煤厂",), (_eq("15", "破碎机"),),
                         profile="two_shift"),
                 Process("供热", ("coal",), (), (_eq("13", "锅炉", "coal"),)),
                 _UTILITIES,
             ), water_per_tce=2.0),
)
