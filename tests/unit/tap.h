/* A tiny assertion kit: each failed check prints where and why, and the
 * test exits non-zero at the end. */
#ifndef TAP_H
#define TAP_H
#include <stdio.h>
#include <string.h>

static int tap_failed;
static int tap_checks;

#define CHECK(cond) do { tap_checks++; if(!(cond)){ tap_failed++; \
	fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); } } while(0)
#define CHECK_EQ(a, b) do { long long _a = (long long)(a), _b = (long long)(b); tap_checks++; \
	if(_a != _b){ tap_failed++; fprintf(stderr, "%s:%d: %s == %lld, expected %s == %lld\n", \
	__FILE__, __LINE__, #a, _a, #b, _b); } } while(0)
#define CHECK_STR(a, b) do { const char *_a = (a), *_b = (b); tap_checks++; \
	if(!_a || !_b || strcmp(_a, _b)){ tap_failed++; fprintf(stderr, "%s:%d: \"%s\" != \"%s\"\n", \
	__FILE__, __LINE__, _a ? _a : "(null)", _b ? _b : "(null)"); } } while(0)
#define TAP_DONE() (printf("%d checks, %d failed\n", tap_checks, tap_failed), tap_failed ? 1 : 0)
#endif
