"""The database every stage shares: schema, engines and migrations."""
