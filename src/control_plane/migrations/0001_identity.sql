-- The identity records (tokens, scope maps, repository attributes, signature trust, the
-- admin password record): filled in by the identity store's PostgreSQL backend.
SELECT 1;
