/*
 * MOSQ_EVT_ACL_CHECK: who may publish, subscribe to and receive what;
 * and the disconnect that ends a client's session.
 */
#ifndef IM_BROKER_ON_ACL_H
#define IM_BROKER_ON_ACL_H

int im_acl__check_cb(int event, void *event_data, void *userdata);
/* Registered only with plugin_opt_nonim_acl allow: non-IM topics. */
int im_acl__fallback_cb(int event, void *event_data, void *userdata);
int im_acl__disconnect_cb(int event, void *event_data, void *userdata);

#endif
