import asyncpg

from runtime.migrate import available, migrate
from tools.guest import create_database, drop_database


async def test_migrate_creates_hypertables_and_is_safe_to_rerun() -> None:
    dsn = await create_database()
    try:
        first = await migrate(dsn)
        assert first == [name for _, name, _ in available()]
        assert await migrate(dsn) == []
        conn = await asyncpg.connect(dsn)
        try:
            hypertables = {
                r["hypertable_name"]
                for r in await conn.fetch("SELECT hypertable_name FROM timescaledb_information.hypertables")
            }
            assert {"readings", "consumption"} <= hypertables
            tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
            assert {"readings", "consumption", "quarantine", "items"} <= tables
        finally:
            await conn.close()
    finally:
        await drop_database(dsn)
