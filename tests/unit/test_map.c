/* The string map: puts, gets, deletes in any order (backward-shift
 * deletion must keep every remaining key findable), growth. Also the
 * wire check for NUL bytes in request strings. */
#include <stdlib.h>

#include <mosquitto.h>

#include "base/map.h"
#include "codec/route.h"
#include "tap.h"

static void map_random_ops(void)
{
	struct im__map m = {0};
	char key[32];
	int present[2000] = {0};
	int i, k, round;

	srand(7);
	for(round = 0; round < 20000; round++){
		k = rand() % 2000;
		snprintf(key, sizeof(key), "user-%d", k);
		if(rand() % 3){
			CHECK_EQ(im_map__put(&m, key, strlen(key), (void *)(intptr_t)(k + 1)), MOSQ_ERR_SUCCESS);
			present[k] = 1;
		}else{
			void *v = im_map__del(&m, key, strlen(key));
			CHECK(present[k] ? v == (void *)(intptr_t)(k + 1) : v == NULL);
			present[k] = 0;
		}
	}
	for(i = 0, k = 0; i < 2000; i++){
		snprintf(key, sizeof(key), "user-%d", i);
		void *v = im_map__get(&m, key, strlen(key));
		if(present[i]){
			CHECK(v == (void *)(intptr_t)(i + 1));
			k++;
		}else{
			CHECK(v == NULL);
		}
	}
	CHECK_EQ(m.count, k);
	CHECK(m.cap >= 2 * m.count);
	/* Same bytes, different lengths are different keys. */
	CHECK_EQ(im_map__put(&m, "ab", 1, (void *)1), MOSQ_ERR_SUCCESS);
	CHECK(im_map__get(&m, "ab", 2) == NULL);
	im_map__free(&m, NULL);
	CHECK(m.slots == NULL && m.count == 0);
}

static void nul_in_requests(void)
{
	/* GroupRequest{op: "create", group: "zz\0evil"} */
	static const uint8_t bad[] = {0x0a, 6, 'c', 'r', 'e', 'a', 't', 'e', 0x12, 7, 'z', 'z', 0, 'e', 'v', 'i', 'l'};
	static const uint8_t good[] = {0x0a, 6, 'c', 'r', 'e', 'a', 't', 'e', 0x12, 2, 'z', 'z', 0x18, 0x05};
	static const uint8_t truncated[] = {0x0a, 50, 'x'};

	CHECK(im_route__has_nul(bad, sizeof(bad)));
	CHECK(!im_route__has_nul(good, sizeof(good)));
	CHECK(!im_route__has_nul(truncated, sizeof(truncated))); /* left to the unpacker */
	CHECK(!im_route__has_nul("", 0));
}

int main(void)
{
	map_random_ops();
	nul_in_requests();
	return TAP_DONE();
}
