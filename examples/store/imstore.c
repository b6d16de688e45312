/*
 * imstore: look into a mosquitto-im store, and back it up, while the broker
 * runs. Read-only on the live database (WAL lets readers and the broker's
 * writer work side by side).
 *
 *   imstore inspect im.db                 # every timeline: head, first, rows, cursors
 *   imstore inspect im.db u/bob           # one timeline, with each device's cursor
 *   imstore backup im.db backup.db        # online, consistent copy (VACUUM INTO)
 *
 * Restoring is a file copy with the broker stopped: docs/OPERATIONS.md.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

static int usage(void)
{
	fprintf(stderr, "usage: imstore inspect <db> [timeline]\n       imstore backup <db> <destination>\n");
	return 2;
}

static sqlite3 *open_ro(const char *path)
{
	sqlite3 *db = NULL;

	if(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK){
		fprintf(stderr, "imstore: cannot open %s: %s\n", path, db ? sqlite3_errmsg(db) : "out of memory");
		sqlite3_close(db);
		return NULL;
	}
	sqlite3_busy_timeout(db, 5000);
	return db;
}

static int inspect_all(sqlite3 *db)
{
	sqlite3_stmt *s;
	int rc;

	if(sqlite3_prepare_v2(db,
				"SELECT t.name, max(t.head_seq, coalesce(max(m.seq), 0)), t.first_seq, count(m.seq),"
				" (SELECT count(*) FROM cursors c WHERE c.tl = t.id)"
				" FROM timelines t LEFT JOIN messages m ON m.tl = t.id GROUP BY t.id ORDER BY t.name",
				-1, &s, NULL) != SQLITE_OK){
		fprintf(stderr, "imstore: %s\n", sqlite3_errmsg(db));
		return 1;
	}
	printf("%-40s %10s %10s %10s %8s\n", "timeline", "head", "first", "rows", "cursors");
	while((rc = sqlite3_step(s)) == SQLITE_ROW){
		printf("%-40s %10lld %10lld %10lld %8lld\n", sqlite3_column_text(s, 0),
				sqlite3_column_int64(s, 1), sqlite3_column_int64(s, 2),
				sqlite3_column_int64(s, 3), sqlite3_column_int64(s, 4));
	}
	sqlite3_finalize(s);
	return rc == SQLITE_DONE ? 0 : 1;
}

static int inspect_one(sqlite3 *db, const char *name)
{
	sqlite3_stmt *s;
	int rc, found = 0;

	sqlite3_prepare_v2(db,
			"SELECT t.id, max(t.head_seq, coalesce((SELECT max(seq) FROM messages WHERE tl = t.id), 0)), t.first_seq,"
			" (SELECT count(*) FROM messages WHERE tl = t.id) FROM timelines t WHERE t.name = ?1", -1, &s, NULL);
	sqlite3_bind_text(s, 1, name, -1, SQLITE_STATIC);
	if(sqlite3_step(s) == SQLITE_ROW){
		found = 1;
		printf("timeline %s\nhead %lld\nfirst %lld\nrows %lld\n", name, sqlite3_column_int64(s, 1),
				sqlite3_column_int64(s, 2), sqlite3_column_int64(s, 3));
	}
	sqlite3_finalize(s);
	if(!found){
		fprintf(stderr, "imstore: no timeline %s\n", name);
		return 1;
	}
	sqlite3_prepare_v2(db, "SELECT c.user, c.client_id, c.seq FROM cursors c JOIN timelines t ON t.id = c.tl"
			" WHERE t.name = ?1 ORDER BY c.user, c.client_id", -1, &s, NULL);
	sqlite3_bind_text(s, 1, name, -1, SQLITE_STATIC);
	while((rc = sqlite3_step(s)) == SQLITE_ROW){
		printf("cursor %s %s %lld\n", sqlite3_column_text(s, 0), sqlite3_column_text(s, 1), sqlite3_column_int64(s, 2));
	}
	sqlite3_finalize(s);
	return rc == SQLITE_DONE ? 0 : 1;
}

/* A restored backup is a store that went back in time: seqs after the
 * backup point will be handed out again, to other messages. The copy gets
 * a store id of its own, so that clients seeing it start over instead of
 * dropping new messages as duplicates of ones they hold (docs/PROTOCOL.md,
 * "Store id"). When the broker's journal still holds what came after the
 * backup, it is rolled forward on start; the new id then costs clients a
 * resync, never a lost message. */
static int new_store_id(const char *dest)
{
	sqlite3 *db;
	char *err = NULL;
	int rc;

	if(sqlite3_open_v2(dest, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK){
		fprintf(stderr, "imstore: cannot open the backup %s: %s\n", dest, sqlite3_errmsg(db));
		sqlite3_close(db);
		return 1;
	}
	rc = sqlite3_exec(db, "UPDATE meta SET value = randomblob(8) WHERE key = 'store_id'", NULL, NULL, &err);
	if(rc != SQLITE_OK){
		fprintf(stderr, "imstore: cannot give the backup a store id of its own: %s\n", err ? err : "?");
		sqlite3_free(err);
	}
	sqlite3_close(db);
	return rc == SQLITE_OK ? 0 : 1;
}

static int backup(sqlite3 *db, const char *dest)
{
	sqlite3_stmt *s;
	int rc;

	if(access(dest, F_OK) == 0){
		fprintf(stderr, "imstore: %s exists; refusing to overwrite it\n", dest);
		return 1;
	}
	/* One statement, one read transaction: a consistent snapshot, while
	 * the broker keeps writing to the WAL. */
	sqlite3_prepare_v2(db, "VACUUM INTO ?1", -1, &s, NULL);
	sqlite3_bind_text(s, 1, dest, -1, SQLITE_STATIC);
	rc = sqlite3_step(s);
	sqlite3_finalize(s);
	if(rc != SQLITE_DONE){
		fprintf(stderr, "imstore: backup failed: %s\n", sqlite3_errmsg(db));
		return 1;
	}
	if(new_store_id(dest) != 0) return 1;
	printf("backup written to %s\n", dest);
	return 0;
}

int main(int argc, char **argv)
{
	sqlite3 *db;
	int rc;

	if(argc < 3) return usage();
	if(strcmp(argv[1], "inspect") && strcmp(argv[1], "backup")) return usage();
	if(!strcmp(argv[1], "backup") && argc != 4) return usage();
	if((db = open_ro(argv[2])) == NULL) return 1;
	if(!strcmp(argv[1], "backup")) rc = backup(db, argv[3]);
	else rc = argc > 3 ? inspect_one(db, argv[3]) : inspect_all(db);
	sqlite3_close(db);
	return rc;
}
