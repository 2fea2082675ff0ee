// The daemon's two native helpers. (1) A netlink socket (NETLINK_ROUTE; NETLINK_NETFILTER for
// ipset members): the veth, address and route changes of Join and Leave
// without starting `ip` for each (a process costs 8-17 ms on a small VM; a netlink round trip
// costs microseconds). Messages are built and parsed in TypeScript (dataplane/netlink/); this file
// only opens the socket, optionally inside a named network namespace (tests), and exchanges
// messages on libuv's thread pool so the daemon's thread never blocks on the kernel.
//
// (2) spawn(): starts a tool (iptables-restore, ipset) with posix_spawn, which glibc implements
// with vfork semantics: the child shares the daemon's memory until it execs, so nothing is copied.
// Node's own spawn forks, which copies the page tables of the whole daemon on its only thread
// (6 ms for a 50 MB node, 11 ms at 155 MB on the project's VM; dataplane/exec.ts). The child's
// pipes are served and the child reaped on a thread-pool thread.
//
// transact(fd, messages, callback): sends the messages one at a time and, for each, collects every
// reply with its sequence number up to and including its NLMSG_ERROR (an ACK is an error of 0) or
// NLMSG_DONE. It stops after the first message the kernel refuses, as `ip -batch` does: a later
// step (bringing a link up) must never run on something an earlier step failed to create.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <time.h>
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

// open(netnsPath: string | null, timeoutMs: number, protocol: number): number. Protocols:
// NETLINK_ROUTE (links, addresses, routes) and NETLINK_NETFILTER (ipset members).
static napi_value nl_open(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t protocol = -1;
  if (argc != 3 || napi_get_value_int32(env, argv[2], &protocol) != napi_ok ||
      (protocol != NETLINK_ROUTE && protocol != NETLINK_NETFILTER)) {
    napi_throw_type_error(env, NULL, "open(netnsPath, timeoutMs, NETLINK_ROUTE | NETLINK_NETFILTER)");
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
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, protocol);
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
      // A signed length: NLMSG_NEXT may take it below zero after a short last message, and
      // NLMSG_OK must then stop (a cast to size_t would make it huge and read past the data).
      int len = (int)n;
      for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, len); h = NLMSG_NEXT(h, len)) {
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


// --- spawn ---------------------------------------------------------------------------------

extern char **environ;

typedef struct {
  napi_async_work work;
  napi_ref callback;
  char **argv;    // file is argv[0]'s path
  char *file;
  char **envp;
  char *netns;       // start the tool in this network namespace (a path), or NULL
  int netns_errno;   // entering it failed; nothing ran
  uint8_t *input;
  size_t input_len;
  int64_t timeout_ms;
  size_t max_buffer;
  chunk out, err;
  int spawn_errno;   // posix_spawn failed (ENOENT: not installed)
  int status;        // waitpid status
  int killed;        // we sent SIGKILL (timeout or output limit)
  int over_limit;    // output exceeded max_buffer
  int io_errno;
} spawned;

static void free_strings(char **v) {
  if (v == NULL) return;
  for (char **p = v; *p != NULL; p++) free(*p);
  free(v);
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void spawn_execute(napi_env env, void *arg) {
  (void)env;
  spawned *sp = arg;
  int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1};
  if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) {
    sp->spawn_errno = errno;
    goto close_all;
  }
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_adddup2(&fa, err[1], 2);
  posix_spawnattr_init(&attr);
  // The tool starts as from a shell: no blocked signals, default dispositions (Node ignores
  // SIGPIPE; a tool writing to a closed pipe must die of it as usual).
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  pid_t pid = -1;
  int rc = 0, home = -1, target = -1;
  // A child starts in its creator's network namespace, and setns() moves only the calling
  // thread: this pool thread enters the namespace for the spawn alone (as `nsenter --net` would,
  // without a second program).
  if (sp->netns != NULL) {
    home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    target = home < 0 ? -1 : open(sp->netns, O_RDONLY | O_CLOEXEC);
    if (home < 0 || target < 0 || setns(target, CLONE_NEWNET) != 0) sp->netns_errno = errno;
  }
  if (sp->netns_errno == 0) {
    rc = posix_spawnp(&pid, sp->file, &fa, &attr, sp->argv, sp->envp);
    if (sp->netns != NULL && setns(home, CLONE_NEWNET) != 0) abort();
  }
  if (home >= 0) close(home);
  if (target >= 0) close(target);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  if (sp->netns_errno != 0) {
    rc = sp->netns_errno;
  }
  close(in[0]);
  close(out[1]);
  close(err[1]);
  in[0] = out[1] = err[1] = -1;
  if (rc != 0) {
    if (sp->netns_errno == 0) sp->spawn_errno = rc;
    goto close_all;
  }
  fcntl(in[1], F_SETFL, O_NONBLOCK);
  size_t written = 0;
  if (sp->input_len == 0) {
    close(in[1]);
    in[1] = -1;
  }
  int64_t deadline = now_ms() + sp->timeout_ms;
  uint8_t buf[65536];
  while (out[0] >= 0 || err[0] >= 0) {
    struct pollfd fds[3];
    int n = 0, io = -1, oo = -1, eo = -1;
    if (in[1] >= 0) { io = n; fds[n++] = (struct pollfd){.fd = in[1], .events = POLLOUT}; }
    if (out[0] >= 0) { oo = n; fds[n++] = (struct pollfd){.fd = out[0], .events = POLLIN}; }
    if (err[0] >= 0) { eo = n; fds[n++] = (struct pollfd){.fd = err[0], .events = POLLIN}; }
    int64_t left = deadline - now_ms();
    if (left <= 0 && !sp->killed) {
      kill(pid, SIGKILL);
      sp->killed = 1;
    }
    // After a kill the pipes close as the process dies: wait for that without a deadline.
    int r = poll(fds, n, sp->killed ? -1 : (int)(left > 1000 ? 1000 : left));
    if (r < 0) {
      if (errno == EINTR) continue;
      sp->io_errno = errno;
      if (!sp->killed) { kill(pid, SIGKILL); sp->killed = 1; }
      break;
    }
    if (io >= 0 && (fds[io].revents & (POLLOUT | POLLERR | POLLHUP))) {
      ssize_t w = write(in[1], sp->input + written, sp->input_len - written);
      if (w > 0) written += (size_t)w;
      // EPIPE (the tool exited without reading everything) shows in its exit status instead.
      if ((w < 0 && errno != EAGAIN && errno != EINTR) || written == sp->input_len) {
        close(in[1]);
        in[1] = -1;
      }
    }
    int *fdp[2] = {&out[0], &err[0]};
    int idx[2] = {oo, eo};
    chunk *dst[2] = {&sp->out, &sp->err};
    for (int k = 0; k < 2; k++) {
      if (idx[k] < 0 || !(fds[idx[k]].revents & (POLLIN | POLLERR | POLLHUP))) continue;
      ssize_t got = read(*fdp[k], buf, sizeof buf);
      if (got > 0) {
        size_t room = sp->max_buffer > dst[k]->len ? sp->max_buffer - dst[k]->len : 0;
        size_t keep = (size_t)got < room ? (size_t)got : room;
        if (keep > 0 && append(dst[k], buf, keep) != 0) sp->io_errno = ENOMEM;
        if ((size_t)got > room && !sp->over_limit) {
          sp->over_limit = 1;
          if (!sp->killed) { kill(pid, SIGKILL); sp->killed = 1; }
        }
      } else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
        close(*fdp[k]);
        *fdp[k] = -1;
      }
    }
  }
  // The pipes closed: the tool has exited or is about to (unless it left a child holding none of
  // them); the deadline still holds.
  for (;;) {
    pid_t w = waitpid(pid, &sp->status, sp->killed ? 0 : WNOHANG);
    if (w == pid || (w < 0 && errno != EINTR)) break;
    if (w == 0) {
      if (now_ms() >= deadline) {
        kill(pid, SIGKILL);
        sp->killed = 1;
      } else {
        struct timespec pause = {.tv_sec = 0, .tv_nsec = 200000};
        nanosleep(&pause, NULL);
      }
    }
  }
close_all:
  for (int i = 0; i < 2; i++) {
    if (in[i] >= 0) close(in[i]);
    if (out[i] >= 0) close(out[i]);
    if (err[i] >= 0) close(err[i]);
  }
}

static void spawn_complete(napi_env env, napi_status status, void *arg) {
  spawned *sp = arg;
  napi_value cb, global, result, v, undefined;
  napi_get_reference_value(env, sp->callback, &cb);
  napi_get_global(env, &global);
  napi_get_undefined(env, &undefined);
  napi_create_object(env, &result);
  void *dst = NULL;
  napi_create_buffer_copy(env, sp->out.len, sp->out.data, &dst, &v);
  napi_set_named_property(env, result, "stdout", v);
  napi_create_buffer_copy(env, sp->err.len, sp->err.data, &dst, &v);
  napi_set_named_property(env, result, "stderr", v);
  if (status != napi_ok) {
    napi_create_int32(env, ECANCELED, &v);
    napi_set_named_property(env, result, "spawnErrno", v);
  } else if (sp->netns_errno != 0) {
    napi_create_int32(env, sp->netns_errno, &v);
    napi_set_named_property(env, result, "netnsErrno", v);
  } else if (sp->spawn_errno != 0) {
    napi_create_int32(env, sp->spawn_errno, &v);
    napi_set_named_property(env, result, "spawnErrno", v);
  } else {
    if (WIFEXITED(sp->status)) {
      napi_create_int32(env, WEXITSTATUS(sp->status), &v);
      napi_set_named_property(env, result, "exitCode", v);
    } else if (WIFSIGNALED(sp->status)) {
      napi_create_int32(env, WTERMSIG(sp->status), &v);
      napi_set_named_property(env, result, "signal", v);
    }
    napi_get_boolean(env, sp->killed, &v);
    napi_set_named_property(env, result, "killed", v);
    napi_get_boolean(env, sp->over_limit, &v);
    napi_set_named_property(env, result, "overLimit", v);
  }
  napi_value argv[1] = {result};
  napi_value ignored;
  napi_call_function(env, global, cb, 1, argv, &ignored);
  napi_delete_reference(env, sp->callback);
  napi_delete_async_work(env, sp->work);
  free(sp->out.data);
  free(sp->err.data);
  free(sp->input);
  free(sp->file);
  free(sp->netns);
  free_strings(sp->argv);
  free_strings(sp->envp);
  free(sp);
}

static char *get_string(napi_env env, napi_value v) {
  size_t len = 0;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) return NULL;
  char *s = malloc(len + 1);
  if (s == NULL) return NULL;
  if (napi_get_value_string_utf8(env, v, s, len + 1, &len) != napi_ok || strlen(s) != len) {
    free(s);  // an embedded NUL would cut the argument short: refuse it
    return NULL;
  }
  return s;
}

// spawn(file: string, args: string[], input: Buffer, timeoutMs: number, maxBufferBytes: number,
//       callback: (result) => void, netnsPath?: string): void. The environment is the process's,
//       copied now.
static napi_value nl_spawn(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value a[7];
  CHECK(env, napi_get_cb_info(env, info, &argc, a, NULL, NULL));
  bool is_array = false, is_buffer = false;
  uint32_t nargs = 0;
  int64_t timeout_ms = 0, max_buffer = 0;
  napi_valuetype cbt = napi_undefined;
  void *input = NULL;
  size_t input_len = 0;
  if ((argc != 6 && argc != 7) || napi_is_array(env, a[1], &is_array) != napi_ok || !is_array ||
      napi_get_array_length(env, a[1], &nargs) != napi_ok || nargs > 4096 ||
      napi_is_buffer(env, a[2], &is_buffer) != napi_ok || !is_buffer ||
      napi_get_buffer_info(env, a[2], &input, &input_len) != napi_ok ||
      napi_get_value_int64(env, a[3], &timeout_ms) != napi_ok || timeout_ms < 1 ||
      napi_get_value_int64(env, a[4], &max_buffer) != napi_ok || max_buffer < 0 ||
      napi_typeof(env, a[5], &cbt) != napi_ok || cbt != napi_function) {
    napi_throw_type_error(env, NULL, "spawn(file, args, input, timeoutMs, maxBufferBytes, callback)");
    return NULL;
  }
  spawned *sp = calloc(1, sizeof *sp);
  if (sp == NULL) return throw_errno(env, "allocate", ENOMEM);
  sp->timeout_ms = timeout_ms;
  sp->max_buffer = (size_t)max_buffer;
  sp->file = get_string(env, a[0]);
  napi_valuetype nst = napi_undefined;
  if (argc == 7) napi_typeof(env, a[6], &nst);
  int bad_netns = 0;
  if (nst == napi_string) bad_netns = (sp->netns = get_string(env, a[6])) == NULL;
  else if (nst != napi_undefined && nst != napi_null) bad_netns = 1;
  sp->argv = calloc(nargs + 2, sizeof(char *));
  size_t nenv = 0;
  while (environ[nenv] != NULL) nenv++;
  sp->envp = calloc(nenv + 1, sizeof(char *));
  int bad = bad_netns || sp->file == NULL || sp->argv == NULL || sp->envp == NULL;
  if (!bad) {
    sp->argv[0] = strdup(sp->file);
    bad = sp->argv[0] == NULL;
  }
  for (uint32_t i = 0; !bad && i < nargs; i++) {
    napi_value el;
    bad = napi_get_element(env, a[1], i, &el) != napi_ok || (sp->argv[i + 1] = get_string(env, el)) == NULL;
  }
  for (size_t i = 0; !bad && i < nenv; i++) bad = (sp->envp[i] = strdup(environ[i])) == NULL;
  if (!bad && input_len > 0) {
    sp->input = malloc(input_len);
    bad = sp->input == NULL;
    if (!bad) memcpy(sp->input, input, input_len);
    sp->input_len = input_len;
  }
  if (bad) {
    free(sp->input);
    free(sp->netns);
    free(sp->file);
    free_strings(sp->argv);
    free_strings(sp->envp);
    free(sp);
    napi_throw_type_error(env, NULL, "netlink: spawn: file and arguments must be strings without NUL characters");
    return NULL;
  }
  napi_value name;
  CHECK(env, napi_create_string_utf8(env, "calico-spawn", NAPI_AUTO_LENGTH, &name));
  CHECK(env, napi_create_reference(env, a[5], 1, &sp->callback));
  CHECK(env, napi_create_async_work(env, NULL, name, spawn_execute, spawn_complete, sp, &sp->work));
  CHECK(env, napi_queue_async_work(env, sp->work));
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
      {"spawn", NULL, nl_spawn, NULL, NULL, NULL, napi_default, NULL},
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  return exports;
}
