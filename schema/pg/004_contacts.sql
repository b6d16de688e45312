-- Version 4 of the SQLite store made an undirected `contacts` table, which
-- version 6 replaced with `wrote`. A PostgreSQL store never had it: this
-- version only keeps the numbers of both schemas the same.
SELECT 1;
