/* The relay hub's common event in C: one ready socket, two splices, no Python.
 *
 * ambassador.fastrelay's hub (a thread blocked in epoll_wait) spends most of
 * its time on one kind of event: a connection with nothing pending either way
 * has data to read, and the destination takes it all (request/response
 * traffic). In Python that event costs two os.splice calls, each dropping and
 * retaking the GIL, plus the interpreter around them; measured, that is the
 * whole gap to HAProxy on small requests (bench/notes.md). This module does
 * exactly that event, and nothing else, without the GIL:
 *
 *     socket --splice--> spare pipe --splice--> socket, bytes counted
 *
 * or, for a connection whose source is ahead (a read filled a whole chunk),
 * the same event as a copy through one large buffer (copy_event says why):
 *
 *     socket --recv(MSG_PEEK)--> buffer --send--> socket, taken bytes dropped
 *
 * Every other outcome (end of stream, an error, a destination that did not
 * take everything, any event of a connection that is not in that simple
 * state) is handed back to the Python hub as a result tuple, and the Python
 * hub, which owns all connection state, handles it as it always has. The
 * state here is per file descriptor: the peer, whether the simple path may be
 * taken ("fast", which the Python hub switches as its state changes), the
 * bytes forwarded and not yet folded into the connection's counters, the time
 * of the last event, and a generation that changes with every set and clear,
 * so that a result about a descriptor that was closed and reused meanwhile is
 * recognised as stale.
 *
 * A mutex guards the table: poll holds it while it handles a batch (with the
 * GIL released), the methods called from Python hold it for a few loads and
 * stores. poll never needs the GIL while it holds the mutex, so there is no
 * lock-order problem.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>

#define MAX_EVENTS 256

/* What poll reports for an event it did not complete. */
enum {
    R_SLOW = 0,      /* not attempted: the Python hub handles the event */
    R_EOF = 1,       /* the source ended (read returned 0) */
    R_READ_ERR = 2,  /* reading the source failed (sent: errno) */
    R_WRITE_ERR = 3, /* writing failed (sent: errno); got bytes sit in the spare pipe (may be 0) */
    R_PARTIAL = 4,   /* the destination took sent of got; the rest sits in the spare pipe */
};

typedef struct {
    int dst;         /* the peer descriptor (destination of what is read here) */
    int used;        /* set: this descriptor belongs to a relayed connection */
    int fast;        /* the simple path may be taken for events on it */
    uint64_t gen;    /* changes with every set and clear */
    int bulk;        /* the last read filled a chunk: copy in large reads (see copy_event) */
    uint64_t bytes;  /* read here and delivered to dst, not yet taken */
    double last;     /* CLOCK_MONOTONIC seconds of the last event (time.perf_counter's clock) */
} entry_t;

typedef struct {
    int fd;
    uint32_t events;
    int kind;
    Py_ssize_t got;
    Py_ssize_t sent;
    uint64_t gen;
} result_t;

typedef struct {
    PyObject_HEAD
    pthread_mutex_t mutex;
    entry_t *entries;
    int capacity;
    uint64_t next_gen;
    char *buf;          /* the bulk copy buffer (allocated on first use) */
    size_t buf_size;
    struct epoll_event events[MAX_EVENTS];
    result_t results[MAX_EVENTS];
} TableObject;

static double
monotonic_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int
Table_init(TableObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, ":Table", kwlist)) {
        return -1;
    }
    return 0;
}

static PyObject *
Table_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    TableObject *self = (TableObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    if (pthread_mutex_init(&self->mutex, NULL) != 0) {
        Py_DECREF(self);
        PyErr_SetString(PyExc_OSError, "pthread_mutex_init failed");
        return NULL;
    }
    self->entries = NULL;
    self->capacity = 0;
    self->next_gen = 1;
    self->buf = NULL;
    self->buf_size = 0;
    return (PyObject *)self;
}

static void
Table_dealloc(TableObject *self)
{
    free(self->entries);
    free(self->buf);
    pthread_mutex_destroy(&self->mutex);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The entry of fd, or NULL when out of range (the mutex is held). */
static entry_t *
lookup(TableObject *self, int fd)
{
    if (fd < 0 || fd >= self->capacity) {
        return NULL;
    }
    return &self->entries[fd];
}

static int
parse_fd(PyObject *arg, int *fd)
{
    long value = PyLong_AsLong(arg);
    if (value == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (value < 0 || value > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "file descriptor out of range");
        return -1;
    }
    *fd = (int)value;
    return 0;
}

PyDoc_STRVAR(Table_set_doc, "set(fd, dst): fd relays to dst from now on, on the simple path.");

static PyObject *
Table_set(TableObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    int fd, dst;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "set(fd, dst) takes two arguments");
        return NULL;
    }
    if (parse_fd(args[0], &fd) < 0 || parse_fd(args[1], &dst) < 0) {
        return NULL;
    }
    pthread_mutex_lock(&self->mutex);
    if (fd >= self->capacity) {
        int capacity = self->capacity ? self->capacity : 64;
        while (capacity <= fd) {
            capacity *= 2;
        }
        entry_t *grown = realloc(self->entries, (size_t)capacity * sizeof(entry_t));
        if (grown == NULL) {
            pthread_mutex_unlock(&self->mutex);
            return PyErr_NoMemory();
        }
        memset(grown + self->capacity, 0, (size_t)(capacity - self->capacity) * sizeof(entry_t));
        self->entries = grown;
        self->capacity = capacity;
    }
    entry_t *e = &self->entries[fd];
    e->dst = dst;
    e->used = 1;
    e->fast = 1;
    e->bulk = 0;
    e->gen = self->next_gen++;
    e->bytes = 0;
    e->last = monotonic_now();
    pthread_mutex_unlock(&self->mutex);
    Py_RETURN_NONE;
}

enum { SNAP_TAKE = 1, SNAP_RELEASE = 2 };

/* Copy fd's entry into *out under the mutex (zeros where fd does not relay,
 * but its generation), then zero its byte count (SNAP_TAKE) and take it out of
 * the table (SNAP_RELEASE) as asked. -1: a bad fd argument (exception set). */
static int
snapshot(TableObject *self, PyObject *arg, int what, entry_t *out)
{
    int fd;
    if (parse_fd(arg, &fd) < 0) {
        return -1;
    }
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&self->mutex);
    entry_t *e = lookup(self, fd);
    if (e != NULL) {
        *out = *e;
        if (e->used && (what & SNAP_TAKE)) {
            e->bytes = 0;
        }
        if (e->used && (what & SNAP_RELEASE)) {
            e->used = 0;
            e->fast = 0;
            e->gen = self->next_gen++;
        }
    }
    pthread_mutex_unlock(&self->mutex);
    if (!out->used) {
        out->bytes = 0;
        out->last = 0.0;
    }
    return 0;
}

PyDoc_STRVAR(Table_clear_doc,
             "clear(fd) -> int: fd no longer relays; returns the bytes not taken yet.");

static PyObject *
Table_clear(TableObject *self, PyObject *arg)
{
    entry_t copy;
    if (snapshot(self, arg, SNAP_TAKE | SNAP_RELEASE, &copy) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(copy.bytes);
}

PyDoc_STRVAR(Table_take_doc, "take(fd) -> int: the bytes read on fd and delivered since last taken.");

static PyObject *
Table_take(TableObject *self, PyObject *arg)
{
    entry_t copy;
    if (snapshot(self, arg, SNAP_TAKE, &copy) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(copy.bytes);
}

PyDoc_STRVAR(Table_gen_doc, "gen(fd) -> int: fd's generation (0: never set).");

static PyObject *
Table_gen(TableObject *self, PyObject *arg)
{
    entry_t copy;
    if (snapshot(self, arg, 0, &copy) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(copy.gen);
}

PyDoc_STRVAR(Table_last_doc,
             "last(fd) -> float: time.perf_counter() of fd's last event (0.0: not relaying).");

static PyObject *
Table_last(TableObject *self, PyObject *arg)
{
    entry_t copy;
    if (snapshot(self, arg, 0, &copy) < 0) {
        return NULL;
    }
    return PyFloat_FromDouble(copy.last);
}

PyDoc_STRVAR(Table_fast_doc, "fast(fd, on): allow or stop the simple path for events on fd.");

static PyObject *
Table_fast(TableObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    int fd;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "fast(fd, on) takes two arguments");
        return NULL;
    }
    if (parse_fd(args[0], &fd) < 0) {
        return NULL;
    }
    int on = PyObject_IsTrue(args[1]);
    if (on < 0) {
        return NULL;
    }
    pthread_mutex_lock(&self->mutex);
    entry_t *e = lookup(self, fd);
    if (e != NULL && e->used) {
        e->fast = on;
    }
    pthread_mutex_unlock(&self->mutex);
    Py_RETURN_NONE;
}

/* Both descriptors of fd's connection leave the simple path (the mutex is held). */
static void
stop_connection(TableObject *self, entry_t *e, int fd)
{
    e->fast = 0;
    entry_t *peer = lookup(self, e->dst);
    if (peer != NULL && peer->used && peer->dst == fd) {
        peer->fast = 0;
    }
}

/* The event ends with a result for the Python hub (kind, got, sent: see the
 * enum), and the connection leaves the simple path. Returns 1 (a result). */
static int
report(TableObject *self, entry_t *e, int fd, result_t *r, int kind, ssize_t got, ssize_t sent)
{
    r->kind = kind;
    r->got = got;
    r->sent = sent;
    stop_connection(self, e, fd);
    return 1;
}

/* A read of the source returned got (call it at once: it reads errno). -1: go
 * on with got bytes; 0: nothing to read (level-triggered: a real event comes
 * again); 1: *r holds EOF or a read error. */
static int
after_read(TableObject *self, entry_t *e, int fd, result_t *r, ssize_t got)
{
    if (got > 0) {
        return -1;
    }
    if (got == 0) {
        return report(self, e, fd, r, R_EOF, 0, 0);
    }
    if (errno == EAGAIN || errno == EINTR) {
        return 0;
    }
    return report(self, e, fd, r, R_READ_ERR, 0, errno);
}

/* One event of a connection in bulk (e->bulk): copy through a large buffer.
 *
 * Why: in bulk the splice path wakes per arrival and moves one pipe's worth
 * (256 KiB) per splice, and the pages it moves stay referenced until the
 * destination's reader has them, so the sender (on loopback) cannot reuse its
 * own and the receiver is woken per splice. Reading up to 1 MiB into a buffer
 * and writing it in one call, as Envoy does with its 1 MiB buffers, measured
 * iperf3 1 stream 13.2 -> 15.9 Gbit/s (Envoy 13.5) in the same run, at more
 * proxy CPU per byte than splicing (0.32 against 0.29 s per GB; Envoy 0.50)
 * and less for the sender and receiver (bench/notes.md).
 *
 * Nothing is read that the destination may not take: the read peeks
 * (MSG_PEEK), the write says how much was taken, and exactly that much is
 * then dropped from the source (MSG_TRUNC: no copy). When the destination took
 * less, the next bytes of the source are spliced into the spare pipe, up to a
 * chunk, and reported as R_PARTIAL: the same state the splice path leaves, so
 * the Python hub's handling is the same. The connection then leaves bulk mode
 * (a slow destination is served by splices), as it does after a short read.
 * Fairness: an event copies again only while it has moved less than the
 * splice path may (chunk * (burst + 1)); each copy asks for the whole buffer,
 * since splitting the last one measured slower (iperf3 1 stream 13.9 against
 * 15.0 Gbit/s). With the defaults that is 2 MiB per event at most.
 * Returns 1 when *r holds a result, and sets *spare_dirty when the spare pipe
 * holds bytes. */
static int
copy_event(TableObject *self, entry_t *e, int fd, result_t *r, int spare_w, size_t chunk,
           size_t size, int burst, int *spare_dirty)
{
    const unsigned int flags = SPLICE_F_MOVE | SPLICE_F_NONBLOCK;
    char *buf = self->buf;
    size_t budget = chunk * (size_t)(burst + 1);
    while (budget > 0) {
        ssize_t got = recv(fd, buf, size, MSG_PEEK | MSG_DONTWAIT);
        int done = after_read(self, e, fd, r, got);
        if (done >= 0) {
            return done;
        }
        ssize_t sent = send(e->dst, buf, (size_t)got, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (sent < 0) {
            if (errno != EAGAIN) {
                /* nothing was taken from the source */
                return report(self, e, fd, r, R_WRITE_ERR, 0, errno);
            }
            sent = 0;
        }
        if (sent > 0) {
            ssize_t dropped = recv(fd, NULL, (size_t)sent, MSG_TRUNC | MSG_DONTWAIT);
            e->bytes += (uint64_t)sent;
            if (dropped != sent) {
                /* The peeked bytes are there and only this thread reads fd: an
                 * error here is the source failing (they were delivered). */
                return report(self, e, fd, r, R_READ_ERR, 0, dropped < 0 ? errno : EIO);
            }
        }
        if (sent != got) {
            size_t rest = (size_t)(got - sent);
            ssize_t moved = splice(fd, NULL, spare_w, NULL, rest < chunk ? rest : chunk, flags);
            if (moved <= 0) {
                return report(self, e, fd, r, R_READ_ERR, 0, moved < 0 ? errno : EIO);
            }
            e->bulk = 0;
            *spare_dirty = 1;
            return report(self, e, fd, r, R_PARTIAL, sent + moved, sent);
        }
        if ((size_t)got < chunk) {
            e->bulk = 0; /* the source is not ahead of us any more: back to splicing */
            return 0;
        }
        if ((size_t)got < size) {
            return 0; /* drained */
        }
        budget = budget > (size_t)got ? budget - (size_t)got : 0;
    }
    return 0;
}

/* One event on the splice path: source -> spare pipe -> destination, up to
 * burst more chunks while whole chunks arrive. Same contract as copy_event. */
static int
splice_event(TableObject *self, entry_t *e, int fd, result_t *r, int spare_r, int spare_w,
             size_t chunk, int burst, int bulk_ok, int *spare_dirty)
{
    const unsigned int flags = SPLICE_F_MOVE | SPLICE_F_NONBLOCK;
    for (int round = 0; round <= burst; round++) {
        ssize_t got = splice(fd, NULL, spare_w, NULL, chunk, flags);
        int done = after_read(self, e, fd, r, got);
        if (done >= 0) {
            return done;
        }
        ssize_t sent = splice(spare_r, NULL, e->dst, NULL, (size_t)got, flags);
        if (sent < 0) {
            if (errno != EAGAIN) {
                *spare_dirty = 1; /* got bytes sit in the spare pipe */
                return report(self, e, fd, r, R_WRITE_ERR, got, errno);
            }
            sent = 0;
        }
        e->bytes += (uint64_t)sent;
        if (sent != got) {
            *spare_dirty = 1;
            return report(self, e, fd, r, R_PARTIAL, got, sent);
        }
        if ((size_t)got < chunk) {
            return 0; /* a short read drained the socket */
        }
        if (bulk_ok) {
            e->bulk = 1; /* a whole chunk: the source is ahead, copy from the next event */
            return 0;
        }
    }
    return 0;
}

/* Handle a batch of events (the mutex is held, the GIL is not); returns the result count.
 * copy: the bulk copy size (0: splice only; see copy_event). */
static int
handle(TableObject *self, int n, int spare_r, int spare_w, size_t chunk, int burst, size_t copy)
{
    int count = 0;
    /* The spare pipe holds bytes (the Python hub must replace it), or there is
     * none (-1: descriptors ran out; the Python hub makes one when it can). */
    int spare_dirty = spare_r < 0 || spare_w < 0;
    int bulk_ok = copy >= chunk && self->buf != NULL && self->buf_size >= copy;
    double now = monotonic_now();
    for (int i = 0; i < n; i++) {
        int fd = self->events[i].data.fd;
        uint32_t ev = self->events[i].events;
        entry_t *e = lookup(self, fd);
        result_t *r = &self->results[count];
        r->fd = fd;
        r->events = ev;
        r->got = 0;
        r->sent = 0;
        r->gen = 0;
        if (e == NULL || !e->used) {
            r->kind = R_SLOW; /* the wake-up pipe, or a descriptor Python knows better */
            count++;
            continue;
        }
        e->last = now;
        r->gen = e->gen;
        if (!e->fast || spare_dirty) {
            r->kind = R_SLOW;
            count++;
            continue;
        }
        if (e->bulk && bulk_ok) {
            count += copy_event(self, e, fd, r, spare_w, chunk, copy, burst, &spare_dirty);
        } else {
            count += splice_event(self, e, fd, r, spare_r, spare_w, chunk, burst, bulk_ok,
                                  &spare_dirty);
        }
    }
    return count;
}

PyDoc_STRVAR(Table_poll_doc,
             "poll(epfd, timeout_ms, spare_r, spare_w, chunk, burst, copy=0) -> list\n\n"
             "Wait for events on the epoll set (-1: no timeout), complete the simple ones,\n"
             "splicing chunk bytes at a time, or, once a read filled a chunk, copying up\n"
             "to copy bytes at a time (copy >= chunk; 0: always splice),\n"
             "return the others in order as (fd, events, kind, got, sent, gen) tuples.\n"
             "After a WRITE_ERR or PARTIAL result the spare pipe holds bytes and every\n"
             "later event of the batch is returned unattempted (SLOW); so is every event\n"
             "when there is no spare pipe (spare_r or spare_w negative).");

static PyObject *
Table_poll(TableObject *self, PyObject *args)
{
    int epfd, timeout, spare_r, spare_w, burst;
    Py_ssize_t chunk, copy = 0;
    if (!PyArg_ParseTuple(args, "iiiini|n:poll", &epfd, &timeout, &spare_r, &spare_w, &chunk,
                          &burst, &copy)) {
        return NULL;
    }
    if (chunk <= 0 || burst < 0 || copy < 0) {
        PyErr_SetString(PyExc_ValueError,
                        "chunk must be positive, burst and copy not negative");
        return NULL;
    }
    if ((size_t)copy > self->buf_size && copy >= chunk) {
        /* Large: malloc maps it, and its pages cost memory only once bulk
         * traffic touches them. Refused: splice only, as with copy=0. */
        pthread_mutex_lock(&self->mutex);
        char *grown = realloc(self->buf, (size_t)copy);
        if (grown != NULL) {
            self->buf = grown;
            self->buf_size = (size_t)copy;
        }
        pthread_mutex_unlock(&self->mutex);
    }
    int n, count = 0, saved_errno = 0;
    Py_BEGIN_ALLOW_THREADS
    n = epoll_wait(epfd, self->events, MAX_EVENTS, timeout);
    if (n < 0) {
        saved_errno = errno;
    } else if (n > 0) {
        pthread_mutex_lock(&self->mutex);
        count = handle(self, n, spare_r, spare_w, (size_t)chunk, burst, (size_t)copy);
        pthread_mutex_unlock(&self->mutex);
    }
    Py_END_ALLOW_THREADS
    if (n < 0) {
        if (saved_errno == EINTR) {
            if (PyErr_CheckSignals() < 0) {
                return NULL;
            }
            return PyList_New(0);
        }
        errno = saved_errno;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *out = PyList_New(count);
    if (out == NULL) {
        return NULL;
    }
    for (int i = 0; i < count; i++) {
        result_t *r = &self->results[i];
        PyObject *item = Py_BuildValue("(iIinnK)", r->fd, r->events, r->kind, r->got, r->sent,
                                       (unsigned long long)r->gen);
        if (item == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, item);
    }
    return out;
}

static PyMethodDef Table_methods[] = {
    {"set", (PyCFunction)(void (*)(void))Table_set, METH_FASTCALL, Table_set_doc},
    {"clear", (PyCFunction)Table_clear, METH_O, Table_clear_doc},
    {"take", (PyCFunction)Table_take, METH_O, Table_take_doc},
    {"fast", (PyCFunction)(void (*)(void))Table_fast, METH_FASTCALL, Table_fast_doc},
    {"gen", (PyCFunction)Table_gen, METH_O, Table_gen_doc},
    {"last", (PyCFunction)Table_last, METH_O, Table_last_doc},
    {"poll", (PyCFunction)Table_poll, METH_VARARGS, Table_poll_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(Table_doc, "Per-descriptor relay state of one hub, and its poll loop's simple path.");

static PyTypeObject TableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ambassador._splicefast.Table",
    .tp_basicsize = sizeof(TableObject),
    .tp_itemsize = 0,
    .tp_dealloc = (destructor)Table_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = Table_doc,
    .tp_methods = Table_methods,
    .tp_init = (initproc)Table_init,
    .tp_new = Table_new,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ambassador._splicefast",
    .m_doc = "The relay hub's common event (one ready socket, two splices) without the GIL.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__splicefast(void)
{
    if (PyType_Ready(&TableType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "SLOW", R_SLOW) < 0
        || PyModule_AddIntConstant(m, "EOF", R_EOF) < 0
        || PyModule_AddIntConstant(m, "READ_ERR", R_READ_ERR) < 0
        || PyModule_AddIntConstant(m, "WRITE_ERR", R_WRITE_ERR) < 0
        || PyModule_AddIntConstant(m, "PARTIAL", R_PARTIAL) < 0
        || PyModule_AddIntConstant(m, "MAX_EVENTS", MAX_EVENTS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&TableType);
    if (PyModule_AddObject(m, "Table", (PyObject *)&TableType) < 0) {
        Py_DECREF(&TableType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
