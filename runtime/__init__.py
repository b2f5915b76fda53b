"""What every stage stands on and none of them owns: the database pool, the one
classification of database errors and the health state it feeds, the schema
migrations, the one backoff and the one stage runner.  It imports no stage."""
