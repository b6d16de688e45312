/* Topic and name rules. */
#include <mosquitto.h>

#include "base/config.h"
#include "base/limits.h"
#include "base/name.h"
#include "codec/route.h"
#include "tap.h"

int main(void)
{
	struct im__config cfg = {0};
	struct im__route r;
	char tl[IM_TL_MAX + 1];
	char longname[80];

	cfg.prefix = "im";
	cfg.prefix_len = 2;

	CHECK(im_name__valid("alice", 5));
	CHECK(im_name__valid("\xc3\xa9mile", 6));          /* émile */
	CHECK(im_name__valid("\xe5\xbc\xa0\xe4\xb8\x89", 6)); /* 张三 */
	CHECK(!im_name__valid("", 0));
	CHECK(!im_name__valid("a/b", 3));
	CHECK(!im_name__valid("a+b", 3));
	CHECK(!im_name__valid("a#", 2));
	CHECK(!im_name__valid("$sys", 4));
	CHECK(!im_name__valid("a\0b", 3));
	CHECK(!im_name__valid("a\nb", 3));
	CHECK(!im_name__valid("\xc3", 1));                 /* truncated */
	CHECK(!im_name__valid("\xc0\xaf", 2));             /* overlong '/' */
	CHECK(!im_name__valid("\xed\xa0\x80", 3));         /* surrogate */
	CHECK(!im_name__valid("\xff", 1));
	memset(longname, 'a', sizeof(longname));
	CHECK(im_name__valid(longname, 64));
	CHECK(!im_name__valid(longname, 65));

	CHECK_EQ(im_route__parse_topic(&cfg, "im/u/bob", &r), MOSQ_ERR_SUCCESS);
	CHECK_EQ(r.kind, 'u');
	CHECK_EQ(r.name_len, 3);
	CHECK_EQ(im_route__timeline(&r, tl, sizeof(tl)), 5);
	CHECK_STR(tl, "u/bob");
	CHECK_EQ(im_route__parse_topic(&cfg, "im/g/team", &r), MOSQ_ERR_SUCCESS);
	CHECK_EQ(r.kind, 'g');
	CHECK_EQ(im_route__parse_topic(&cfg, "im/x/bob", &r), MOSQ_ERR_INVAL);
	CHECK_EQ(im_route__parse_topic(&cfg, "im/u/", &r), MOSQ_ERR_INVAL);
	CHECK_EQ(im_route__parse_topic(&cfg, "im/u/bob/extra", &r), MOSQ_ERR_INVAL);
	CHECK_EQ(im_route__parse_topic(&cfg, "imx/u/bob", &r), MOSQ_ERR_INVAL);
	CHECK_EQ(im_route__parse_topic(&cfg, "im", &r), MOSQ_ERR_INVAL);
	CHECK(im_route__in_namespace(&cfg, "im/anything"));
	CHECK(im_route__in_namespace(&cfg, "im"));
	CHECK(!im_route__in_namespace(&cfg, "imx/u/bob"));
	CHECK(!im_route__in_namespace(&cfg, "other/u/bob"));
	CHECK_EQ(im_route__parse_timeline("u/alice", &r), MOSQ_ERR_SUCCESS);
	CHECK_EQ(im_route__parse_timeline("x/alice", &r), MOSQ_ERR_INVAL);
	CHECK_EQ(im_route__parse_timeline("u", &r), MOSQ_ERR_INVAL);
	CHECK_EQ(im_route__parse_timeline("", &r), MOSQ_ERR_INVAL);
	return TAP_DONE();
}
