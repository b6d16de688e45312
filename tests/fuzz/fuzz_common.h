/* Shared bits of the mosquitto-im fuzz targets (libFuzzer). */
#ifndef IM_FUZZ_COMMON_H
#define IM_FUZZ_COMMON_H
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* An invariant that must hold for every input: abort (libFuzzer saves the
 * input as a crash) with a line that says which one broke. */
#define FUZZ_ASSERT(cond) do { if(!(cond)){ \
	fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__, #cond); \
	abort(); } } while(0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);
#endif
