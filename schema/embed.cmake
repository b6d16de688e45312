# Turns schema/NNN_*.sql into a C array of migrations, in file-name order.
# Run at build time: cmake -DSRC=<schema dir> -DOUT=<file.c> [-DNAME=<array>] -P embed.cmake
# NAME defaults to im_schema_migrations (the SQLite schema); schema/pg/ is
# embedded as im_schema_pg_migrations.
if(NOT NAME)
  set(NAME im_schema_migrations)
endif()
file(GLOB files "${SRC}/[0-9][0-9][0-9]_*.sql")
list(SORT files)
set(body "/* Generated from schema/NNN_name.sql (or schema/pg/) by schema/embed.cmake. Do not edit. */\n")
string(APPEND body "#include <stddef.h>\nconst char *const ${NAME}[] = {\n")
foreach(f ${files})
  file(READ "${f}" sql)
  string(REPLACE "\\" "\\\\" sql "${sql}")
  string(REPLACE "\"" "\\\"" sql "${sql}")
  string(REPLACE "\n" "\\n\"\n\"" sql "${sql}")
  string(APPEND body "\"${sql}\",\n")
endforeach()
string(APPEND body "NULL\n};\n")
file(WRITE "${OUT}.tmp" "${body}")
file(COPY_FILE "${OUT}.tmp" "${OUT}" ONLY_IF_DIFFERENT)
