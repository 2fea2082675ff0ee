// A NETLINK_ROUTE socket for the daemon: the veth, address and route changes of Join and Leave
// without starting `ip` for each (a process costs 8-17 ms on a small VM; a netlink round trip
// costs microseconds). Messages are built and parsed in TypeScript (dataplane/netlink/); this file
// only opens the socket, optionally inside a named network namespace (tests), and exchanges
// messages on libuv's thread pool so the daemon's thread never blocks on the kernel.
//
// transact(fd, messages, callback): sends the messages one at a time and, for each, collects every
// reply with its sequence number up to and including its NLMSG_ERROR (an ACK is an error of 0) or
// NLMSG_DONE. It stops after the first message the kernel refuses, as `ip -batch` does: a later
// step (bringing a link up) must never run on something an earlier step failed to create.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <node_api.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define RECV_BUFFER_BYTES 65536
#define MAX_MESSAGES 64
#define MAX_MESSAGE_BYTES 65536

#define CHECK(env, call)                                     \
  do {                                                       \
    if ((call) != napi_ok) {                                 \
      napi_throw_error((env), NULL, "netlink: " #call);      \
      return NULL;                                           \
    }                                                        \
  } while (0)

static napi_value throw_errno(napi_env env, const char *what, int err) {
  char code[16];
  snprintf(code, sizeof code, "%d", err);
  char msg[256];
  snprintf(msg, sizeof msg, "netlink: %s: %s", what, strerror(err));
  napi_throw_error(env, code, msg);
  return NULL;
}

// open(netnsPath: string | null, timeoutMs: number): number
static napi_value nl_open(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 2) {
    napi_throw_type_error(env, NULL, "open(netnsPath, timeoutMs)");
    return NULL;
  }
  napi_valuetype t;
  CHECK(env, napi_typeof(env, argv[0], &t));
  char path[4096] = {0};
  int has_path = 0;
  if (t == napi_string) {
    size_t len = 0;
    CHECK(env, napi_get_value_string_utf8(env, argv[0], path, sizeof path, &len));
    if (len == 0 || len >= sizeof path - 1) {
      napi_throw_range_error(env, NULL, "netlink: namespace path empty or too long");
      return NULL;
    }
    has_path = 1;
  } else if (t != napi_null && t != napi_undefined) {
    napi_throw_type_error(env, NULL, "netlink: netnsPath must be a string or null");
    return NULL;
  }
  int64_t timeout_ms = 0;
  CHECK(env, napi_get_value_int64(env, argv[1], &timeout_ms));
  if (timeout_ms < 1 || timeout_ms > 600000) {
    napi_throw_range_error(env, NULL, "netlink: timeoutMs must be 1-600000");
    return NULL;
  }

  // A socket belongs to the namespace its creator was in: enter the target namespace on this
  // thread just long enough to create it.
  int home = -1, target = -1;
  if (has_path) {
    home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (home < 0) return throw_errno(env, "open /proc/thread-self/ns/net", errno);
    target = open(path, O_RDONLY | O_CLOEXEC);
    if (target < 0) {
      int e = errno;
      close(home);
      return throw_errno(env, path, e);
    }
    if (setns(target, CLONE_NEWNET) != 0) {
      int e = errno;
      close(home);
      close(target);
      return throw_errno(env, "enter namespace", e);
    }
  }
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  int socket_errno = errno;
  if (has_path) {
    // Returning to our own namespace cannot be skipped: the thread would stay in the other one.
    if (setns(home, CLONE_NEWNET) != 0) abort();
    close(home);
    close(target);
  }
  if (fd < 0) return throw_errno(env, "socket", socket_errno);

  struct sockaddr_nl local = {.nl_family = AF_NETLINK};
  int one = 1;
  struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
  if (bind(fd, (struct sockaddr *)&local, sizeof local) != 0 ||
      setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
      setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, "socket setup", e);
  }
  // Best effort (older kernels lack them): error messages from the kernel, and errors without a
  // copy of the request.
  setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof one);
  setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof one);
  napi_value out;
  CHECK(env, napi_create_int32(env, fd, &out));
  return out;
}

// close(fd: number): void
static napi_value nl_close(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd = -1;
  if (argc != 1 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) {
    napi_throw_type_error(env, NULL, "close(fd)");
    return NULL;
  }
  close(fd);
  return NULL;
}

typedef struct {
  uint8_t *data;
  size_t len;
} chunk;

typedef struct {
  napi_async_work work;
  napi_ref callback;
  int fd;
  size_t count;
  chunk requests[MAX_MESSAGES];
  chunk replies[MAX_MESSAGES];
  size_t answered;  // messages whose terminal reply arrived
  int sys_errno;    // a failed send or receive (EAGAIN: no answer in time)
  const char *sys_what;
} transaction;

static int append(chunk *c, const uint8_t *data, size_t len) {
  uint8_t *grown = realloc(c->data, c->len + len);
  if (grown == NULL) return ENOMEM;
  memcpy(grown + c->len, data, len);
  c->data = grown;
  c->len += len;
  return 0;
}

static void execute(napi_env env, void *arg) {
  (void)env;
  transaction *tx = arg;
  struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
  uint8_t *buf = malloc(RECV_BUFFER_BYTES);
  if (buf == NULL) {
    tx->sys_errno = ENOMEM;
    tx->sys_what = "allocate";
    return;
  }
  for (size_t i = 0; i < tx->count; i++) {
    const struct nlmsghdr *req = (const struct nlmsghdr *)tx->requests[i].data;
    uint32_t seq = req->nlmsg_seq;
    if (sendto(tx->fd, tx->requests[i].data, tx->requests[i].len, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0) {
      tx->sys_errno = errno;
      tx->sys_what = "send";
      break;
    }
    int done = 0, refused = 0;
    while (!done) {
      ssize_t n = recv(tx->fd, buf, RECV_BUFFER_BYTES, 0);
      if (n < 0) {
        if (errno == EINTR) continue;
        tx->sys_errno = errno;
        tx->sys_what = "receive";
        break;
      }
      for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
        // Replies to an earlier request that timed out are not this one's.
        if (h->nlmsg_seq != seq) continue;
        int e = append(&tx->replies[i], (const uint8_t *)h, h->nlmsg_len);
        if (e != 0) {
          tx->sys_errno = e;
          tx->sys_what = "collect replies";
          break;
        }
        if (h->nlmsg_type == NLMSG_DONE) done = 1;
        if (h->nlmsg_type == NLMSG_ERROR) {
          done = 1;
          const struct nlmsgerr *err = NLMSG_DATA(h);
          if (h->nlmsg_len >= NLMSG_LENGTH(sizeof(int)) && err->error != 0) refused = 1;
        }
      }
      if (tx->sys_errno != 0) break;
    }
    if (tx->sys_errno != 0) break;
    tx->answered = i + 1;
    if (refused) break;
  }
  free(buf);
}

static void complete(napi_env env, napi_status status, void *arg) {
  transaction *tx = arg;
  napi_value cb, global, argv[2], undefined;
  napi_get_reference_value(env, tx->callback, &cb);
  napi_get_global(env, &global);
  napi_get_undefined(env, &undefined);
  argv[0] = undefined;
  if (status != napi_ok) {
    napi_value msg;
    napi_create_string_utf8(env, "netlink: request cancelled", NAPI_AUTO_LENGTH, &msg);
    napi_create_error(env, NULL, msg, &argv[0]);
  } else if (tx->sys_errno != 0) {
    char text[256];
    snprintf(text, sizeof text, "netlink: %s: %s", tx->sys_what, strerror(tx->sys_errno));
    char code[16];
    snprintf(code, sizeof code, "%d", tx->sys_errno);
    napi_value msg, codev;
    napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &msg);
    napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &codev);
    napi_create_error(env, codev, msg, &argv[0]);
  }
  napi_create_array_with_length(env, tx->answered, &argv[1]);
  for (size_t i = 0; i < tx->answered; i++) {
    napi_value b;
    void *dst = NULL;
    napi_create_buffer_copy(env, tx->replies[i].len, tx->replies[i].data, &dst, &b);
    napi_set_element(env, argv[1], (uint32_t)i, b);
  }
  for (size_t i = 0; i < tx->count; i++) {
    free(tx->requests[i].data);
    free(tx->replies[i].data);
  }
  napi_value result;
  napi_call_function(env, global, cb, 2, argv, &result);
  napi_delete_reference(env, tx->callback);
  napi_delete_async_work(env, tx->work);
  free(tx);
}

// transact(fd: number, messages: Buffer[], callback: (err, replies: Buffer[]) => void): void
static napi_value nl_transact(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd = -1;
  bool is_array = false;
  napi_valuetype cbt = napi_undefined;
  uint32_t count = 0;
  if (argc != 3 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0 ||
      napi_is_array(env, argv[1], &is_array) != napi_ok || !is_array ||
      napi_get_array_length(env, argv[1], &count) != napi_ok || count == 0 || count > MAX_MESSAGES ||
      napi_typeof(env, argv[2], &cbt) != napi_ok || cbt != napi_function) {
    napi_throw_type_error(env, NULL, "transact(fd, messages (1-64 buffers), callback)");
    return NULL;
  }
  transaction *tx = calloc(1, sizeof *tx);
  if (tx == NULL) return throw_errno(env, "allocate", ENOMEM);
  tx->fd = fd;
  for (uint32_t i = 0; i < count; i++) {
    napi_value el;
    bool is_buffer = false;
    void *data = NULL;
    size_t len = 0;
    if (napi_get_element(env, argv[1], i, &el) != napi_ok || napi_is_buffer(env, el, &is_buffer) != napi_ok ||
        !is_buffer || napi_get_buffer_info(env, el, &data, &len) != napi_ok ||
        len < NLMSG_HDRLEN || len > MAX_MESSAGE_BYTES || ((struct nlmsghdr *)data)->nlmsg_len != len) {
      for (uint32_t j = 0; j < i; j++) free(tx->requests[j].data);
      free(tx);
      napi_throw_type_error(env, NULL, "netlink: each message must be a Buffer holding one whole netlink message");
      return NULL;
    }
    tx->requests[i].data = malloc(len);
    if (tx->requests[i].data == NULL) {
      for (uint32_t j = 0; j < i; j++) free(tx->requests[j].data);
      free(tx);
      return throw_errno(env, "allocate", ENOMEM);
    }
    memcpy(tx->requests[i].data, data, len);
    tx->requests[i].len = len;
    tx->count = i + 1;
  }
  napi_value name;
  CHECK(env, napi_create_string_utf8(env, "calico-netlink", NAPI_AUTO_LENGTH, &name));
  CHECK(env, napi_create_reference(env, argv[2], 1, &tx->callback));
  CHECK(env, napi_create_async_work(env, NULL, name, execute, complete, tx, &tx->work));
  CHECK(env, napi_queue_async_work(env, tx->work));
  return NULL;
}

// strerror(errno: number): string, for the kernel's refusals (the same words `ip` prints).
static napi_value nl_strerror(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t e = 0;
  if (argc != 1 || napi_get_value_int32(env, argv[0], &e) != napi_ok) {
    napi_throw_type_error(env, NULL, "strerror(errno)");
    return NULL;
  }
  char buf[256];
  const char *text = strerror_r(e, buf, sizeof buf);
  napi_value out;
  CHECK(env, napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &out));
  return out;
}

NAPI_MODULE_INIT() {
  napi_property_descriptor props[] = {
      {"open", NULL, nl_open, NULL, NULL, NULL, napi_default, NULL},
      {"close", NULL, nl_close, NULL, NULL, NULL, napi_default, NULL},
      {"transact", NULL, nl_transact, NULL, NULL, NULL, napi_default, NULL},
      {"strerror", NULL, nl_strerror, NULL, NULL, NULL, napi_default, NULL},
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  return exports;
}
