/*
 * The protocol's limits (docs/PROTOCOL.md): public, like codec/frame.h, so
 * that clients size their buffers by the same numbers the plugin checks.
 */
#ifndef IM_BASE_LIMITS_H
#define IM_BASE_LIMITS_H

#define IM_NAME_MAX 64          /* user and group names, bytes of UTF-8 */
#define IM_TL_MAX (2 + IM_NAME_MAX) /* "u/<name>" */
#define IM_TOPIC_MAX (64 + 1 + IM_TL_MAX) /* "<prefix>/u/<name>" */
#define IM_CMID_MAX 128         /* client message id, bytes */
#define IM_CTYPE_MAX 256        /* content type, bytes */
#define IM_CLIENT_ID_MAX 65535
#define IM_EXPIRY_MAX (10LL * 365 * 86400) /* im-expiry, seconds: ten years */
#define IM_PREVIEW_MAX 64       /* bytes of a message's text in the conversation list */

#endif
