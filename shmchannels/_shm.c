/*
 * shmchannels._shm: the parts of the bus that Python cannot do.
 *
 *  - a multi-producer / multi-consumer byte ring with variable-length records
 *    that lives in a shared mapping and survives SIGKILL of any participant;
 *  - atomics on arbitrary words of a shared mapping (control segment);
 *  - a futex wait over several rings that releases the GIL;
 *  - a fault-injection hook used by the crash tests.
 *
 * Everything else (naming, routing, expiry policy, registry, asyncio glue)
 * is Python.  The protocol is described in docs/architecture.md; the short
 * version:
 *
 *   positions are absolute byte offsets that only grow (no ABA);
 *   tail = {pos, seq} and head = {pos, seq} move by 16-byte CAS;
 *   seq counts claims, so tail.seq - head.seq is the number of pending
 *   messages (the channel capacity check);
 *   a producer publishes an *intent* (ring, pos, total) in its own process
 *   slot, claims [pos, pos+total) by CAS on tail, writes a WRITING header
 *   naming itself (pid, slot, gen), copies the payload and flips the seal to
 *   READY;
 *   a consumer copies a READY record out and then CASes head past it, so a
 *   consumer that dies never loses a record it did not take, and a record is
 *   handed to exactly one consumer;
 *   every seal is tagged with its own absolute position and XORed with a
 *   per-ring random salt, so stale bytes from an earlier lap (or payload bytes
 *   chosen by a remote client) can never look like a valid record.
 *
 * Nothing here ever waits on another process.  A record whose writer died is
 * turned into a SKIP record by whoever finds it (see Ring.recover), using the
 * header or, if the writer died before writing it, the writer's intent.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#if !defined(__x86_64__) && !defined(__aarch64__)
#error "shmchannels needs a 64-bit x86 or ARM CPU"
#endif

#define RING_MAGIC 0x31474e49524d4853ULL /* "SHMRING1" */
#define RING_VERSION 1u
#define RING_HEADER_SIZE 4096u
#define REC_HDR 64u
#define REC_ALIGN 16u
#define CLOSED_BIT (1ULL << 63)
#define MAX_SLOTS 1024u
#define MAX_WAIT_RINGS 64

enum { ST_SKIP = 0, ST_WRITING = 1, ST_READY = 2, ST_PAD = 3 };

/* put() results */
enum {
    PUT_OK = 0,
    PUT_WAKE = 1,     /* stored; processes are parked on this ring's FIFO bits */
    PUT_FULL = 2,     /* message-count capacity reached */
    PUT_NOSPACE = 3,  /* ring bytes exhausted */
    PUT_TOO_BIG = 4,  /* record can never fit this ring */
    PUT_CLOSED = 5,   /* ring closed (its owner died, or it was retired) */
    PUT_FORKED = 6,   /* writer identity belongs to the parent process */
    PUT_NOMEM = 7,    /* the ring's memory could not be allocated (/dev/shm full) */
};

/* fault-injection points (tests only; a global int compare when unused) */
enum {
    FAULT_NONE = 0,
    FAULT_AFTER_INTENT = 1,  /* intent published, tail not yet claimed */
    FAULT_AFTER_CLAIM = 2,   /* tail claimed, nothing written */
    FAULT_AFTER_PAD = 3,     /* wrap padding written, record header not */
    FAULT_AFTER_HEADER = 4,  /* WRITING header written, payload not */
    FAULT_BEFORE_COMMIT = 5, /* payload written, seal still WRITING */
    FAULT_CONSUMER_COPIED = 6, /* record copied out, head not yet moved */
    FAULT_CONSUMER_TAKEN = 7,  /* head moved, record not yet returned */
};

typedef struct {
    uint64_t magic;       /* 0: written last by ring_init */
    uint32_t version;     /* 8 */
    uint32_t header_size; /* 12 */
    uint64_t data_size;   /* 16: power of two */
    uint64_t salt;        /* 24 */
    uint64_t ring_id;     /* 32 */
    uint64_t created_ns;  /* 40 */
    uint32_t owner_slot;  /* 48: 0xffffffff when the ring has no owner */
    uint32_t flags;       /* 52 */
    uint64_t owner_gen;   /* 56 */
    uint32_t key_len;     /* 64 */
    char key[124];        /* 68 */
    uint64_t populated;   /* 192: data bytes [0, populated) are backed by memory */
    uint8_t _pad0[56];    /* 200 */
    /* 256: producers */
    uint64_t tail_pos __attribute__((aligned(64)));
    uint64_t tail_seq;
    uint64_t last_put_ns; /* on the producers' line: costs them nothing extra */
    uint8_t _pad1[40];
    /* 320: consumers */
    uint64_t head_pos __attribute__((aligned(64)));
    uint64_t head_seq;
    uint8_t _pad2[48];
    /* 384: wake-ups */
    uint32_t wake_seq __attribute__((aligned(64)));
    uint32_t futex_waiters;
    uint32_t fifo_waiters;
    uint32_t _pad3;
    uint64_t fifo_bits[MAX_SLOTS / 64];
    uint8_t _pad4[48];
    /* 576: rare-event counters */
    uint64_t full_total __attribute__((aligned(64)));
    uint64_t expired_total;
    uint64_t recovered_total;
    uint64_t closer;
} ring_hdr_t;

_Static_assert(offsetof(ring_hdr_t, tail_pos) == 256, "tail offset");
_Static_assert(offsetof(ring_hdr_t, head_pos) == 320, "head offset");
_Static_assert(offsetof(ring_hdr_t, wake_seq) == 384, "wake offset");
_Static_assert(offsetof(ring_hdr_t, full_total) == 576, "stats offset");
_Static_assert(sizeof(ring_hdr_t) <= RING_HEADER_SIZE, "header size");

typedef struct {
    uint64_t seal;        /* ((pos << 2) | state) ^ salt, published last */
    uint32_t len;         /* payload bytes; for PAD/SKIP the bytes to skip */
    uint32_t flags;       /* caller's flags (codec) */
    uint32_t pid;
    uint32_t slot;
    uint64_t gen;
    uint64_t deadline_ns; /* CLOCK_MONOTONIC, system-wide on Linux */
    uint64_t sent_ns;
    uint32_t meta_len;    /* payload = meta[meta_len] + body */
    uint32_t _r0;
    uint64_t _r1;
} rec_t;
_Static_assert(sizeof(rec_t) == REC_HDR, "record header");

/* The per-process claim record that lives in the caller's slot of the
 * control segment.  It is a seqlock: iseq is odd while being written. */
typedef struct {
    uint64_t iseq;
    uint64_t ring_id;
    uint64_t pos;
    uint64_t total;
} intent_t;

/* ------------------------------------------------------------------ */
/* process-wide state                                                  */

static volatile int g_fault_point = FAULT_NONE;
static volatile long g_fault_countdown = 0;
static volatile uint64_t g_fork_gen = 0;

static void
fault(int point)
{
    if (g_fault_point == point && --g_fault_countdown <= 0) {
        kill(getpid(), SIGKILL);
        for (;;) pause();
    }
}
#define FAULT(p) do { if (__builtin_expect(g_fault_point == (p), 0)) fault(p); } while (0)

static void
at_fork_child(void)
{
    g_fork_gen++;
}

static inline uint64_t
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static inline uint64_t
align_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) & ~(a - 1);
}

static inline uint64_t
load64(const uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static inline int
cas128(uint64_t *p, uint64_t old_lo, uint64_t old_hi, uint64_t new_lo, uint64_t new_hi)
{
    unsigned __int128 old = ((unsigned __int128)old_hi << 64) | old_lo;
    unsigned __int128 nw = ((unsigned __int128)new_hi << 64) | new_lo;
    return __sync_bool_compare_and_swap((unsigned __int128 *)p, old, nw);
}

/* A {pos, seq} pair is only ever changed by one 16-byte CAS, and pos moves on
 * every change (close only sets a bit of it), so a pos that reads the same
 * before and after the seq load proves the two belong together. */
static inline void
load_pair(const uint64_t *pair, uint64_t *pos, uint64_t *seq)
{
    for (;;) {
        *pos = load64(&pair[0]);
        *seq = load64(&pair[1]);
        if (load64(&pair[0]) == *pos)
            return;
    }
}

static inline uint64_t
seal_of(const ring_hdr_t *h, uint64_t pos, unsigned state)
{
    return ((pos << 2) | state) ^ h->salt;
}

static long
futex_wake_all(uint32_t *addr)
{
    return syscall(SYS_futex, addr, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* ------------------------------------------------------------------ */
/* Writer: this process's identity and intent slot on one bus          */

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    intent_t *intent;
    uint32_t pid;
    uint32_t slot;
    uint64_t gen;
    uint64_t fork_gen;
} WriterObject;

static int
Writer_init(WriterObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"mem", "intent_offset", "slot", "gen", NULL};
    PyObject *mem;
    Py_ssize_t off;
    unsigned int slot;
    unsigned long long gen;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OnIK", kwlist, &mem, &off, &slot, &gen))
        return -1;
    if (self->view.obj) {
        PyErr_SetString(PyExc_RuntimeError, "Writer already initialised");
        return -1;
    }
    if (PyObject_GetBuffer(mem, &self->view, PyBUF_WRITABLE) < 0)
        return -1;
    if (off < 0 || off % 8 || off + (Py_ssize_t)sizeof(intent_t) > self->view.len) {
        PyBuffer_Release(&self->view);
        PyErr_SetString(PyExc_ValueError, "intent offset out of range");
        return -1;
    }
    self->intent = (intent_t *)((char *)self->view.buf + off);
    self->pid = (uint32_t)getpid();
    self->slot = slot;
    self->gen = gen;
    self->fork_gen = g_fork_gen;
    return 0;
}

static void
Writer_dealloc(WriterObject *self)
{
    if (self->view.obj)
        PyBuffer_Release(&self->view);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Writer_get_valid(WriterObject *self, void *closure)
{
    return PyBool_FromLong(self->view.obj && self->fork_gen == g_fork_gen);
}

static PyGetSetDef Writer_getset[] = {
    {"valid", (getter)Writer_get_valid, NULL, "False in a forked child", NULL},
    {NULL}
};

static PyTypeObject WriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmchannels._shm.Writer",
    .tp_basicsize = sizeof(WriterObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Writer_init,
    .tp_dealloc = (destructor)Writer_dealloc,
    .tp_getset = Writer_getset,
    .tp_doc = "This process's slot identity and intent record on one bus.",
};

/* ------------------------------------------------------------------ */
/* Ring                                                                */

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    ring_hdr_t *h;
    char *data;
    uint64_t size;
    uint64_t mask;
    WriterObject *writer; /* NULL for a consume-only handle */
} RingObject;

static int
Ring_init(RingObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"mem", "writer", NULL};
    PyObject *mem, *writer = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O", kwlist, &mem, &writer))
        return -1;
    if (self->view.obj) {
        PyErr_SetString(PyExc_RuntimeError, "Ring already initialised");
        return -1;
    }
    if (writer != Py_None && !PyObject_TypeCheck(writer, &WriterType)) {
        PyErr_SetString(PyExc_TypeError, "writer must be a Writer or None");
        return -1;
    }
    if (PyObject_GetBuffer(mem, &self->view, PyBUF_WRITABLE) < 0)
        return -1;
    ring_hdr_t *h = (ring_hdr_t *)self->view.buf;
    if ((uintptr_t)h % 64 || self->view.len < (Py_ssize_t)RING_HEADER_SIZE ||
        load64(&h->magic) != RING_MAGIC || h->version != RING_VERSION ||
        h->header_size != RING_HEADER_SIZE || h->data_size == 0 ||
        (h->data_size & (h->data_size - 1)) ||
        (uint64_t)self->view.len < RING_HEADER_SIZE + h->data_size) {
        PyBuffer_Release(&self->view);
        PyErr_SetString(PyExc_ValueError, "not an initialised shmchannels ring (bad magic, version or size)");
        return -1;
    }
    self->h = h;
    self->data = (char *)h + RING_HEADER_SIZE;
    self->size = h->data_size;
    self->mask = h->data_size - 1;
    if (writer != Py_None) {
        Py_INCREF(writer);
        self->writer = (WriterObject *)writer;
    }
    return 0;
}

static void
Ring_dealloc(RingObject *self)
{
    Py_CLEAR(self->writer);
    if (self->view.obj)
        PyBuffer_Release(&self->view);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

#define CHECK_RING(self) \
    do { if (!(self)->h) { PyErr_SetString(PyExc_ValueError, "ring not initialised"); return NULL; } } while (0)

/* Consume expired records (and padding) at the head.  Stops at the first
 * record that is live, not ready, or at the tail.  Returns nonzero if head
 * moved, i.e. if bytes or message slots were freed. */
static uint64_t
purge_expired(RingObject *self, uint64_t now)
{
    ring_hdr_t *h = self->h;
    uint64_t progress = 0;
    for (;;) {
        uint64_t hp = load64(&h->head_pos), hs = load64(&h->head_seq);
        uint64_t tp = load64(&h->tail_pos) & ~CLOSED_BIT;
        if (hp >= tp)
            break;
        rec_t *r = (rec_t *)(self->data + (hp & self->mask));
        uint64_t seal = load64(&r->seal);
        if (seal == seal_of(h, hp, ST_PAD) || seal == seal_of(h, hp, ST_SKIP)) {
            uint32_t skip = r->len;
            int counted = seal == seal_of(h, hp, ST_SKIP);
            __atomic_thread_fence(__ATOMIC_ACQUIRE);
            if (load64(&r->seal) != seal)
                continue;
            progress += cas128(&h->head_pos, hp, hs, hp + skip, hs + counted);
            continue;
        }
        if (seal != seal_of(h, hp, ST_READY))
            break;
        uint64_t deadline = r->deadline_ns;
        uint32_t len = r->len;
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (load64(&r->seal) != seal || deadline > now)
            break;
        if (cas128(&h->head_pos, hp, hs, hp + align_up(REC_HDR + len, REC_ALIGN), hs + 1)) {
            __atomic_fetch_add(&h->expired_total, 1, __ATOMIC_RELAXED);
            progress++;
        }
    }
    return progress;
}

/* Rings are sparse files.  Touching a page that tmpfs cannot supply (a full
 * /dev/shm) would kill the writer with SIGBUS, so a producer about to write
 * past `populated` first asks the kernel for those pages with
 * MADV_POPULATE_WRITE, which fails with an error instead of a signal.  Only
 * the first lap pays (one madvise per POPULATE_CHUNK); an idle ring costs
 * only the pages it ever used.  Kernels without it (before 5.14) get the
 * whole ring allocated at creation instead (segments.py, `LAZY_POPULATE`). */
#define POPULATE_CHUNK (256u << 10)
static int g_lazy_populate = -1;

static int
lazy_populate_supported(void)
{
    if (g_lazy_populate < 0) {
        long page = sysconf(_SC_PAGESIZE);
        void *probe = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        g_lazy_populate = probe != MAP_FAILED && madvise(probe, page, MADV_POPULATE_WRITE) == 0;
        if (probe != MAP_FAILED)
            munmap(probe, page);
    }
    return g_lazy_populate;
}

/* Make data bytes [0, end) writable without a fault.  0 on success. */
static int
ring_populate(RingObject *self, uint64_t end)
{
    ring_hdr_t *h = self->h;
    uint64_t have = __atomic_load_n(&h->populated, __ATOMIC_ACQUIRE);
    if (end <= have)
        return 0;
    long page = sysconf(_SC_PAGESIZE);
    uint64_t from = have & ~(uint64_t)(page - 1);
    uint64_t to = align_up(end, POPULATE_CHUNK);
    if (to > self->size)
        to = self->size;
    if (g_lazy_populate && madvise(self->data + from, to - from, MADV_POPULATE_WRITE) != 0)
        return -1;
    while (have < to && !__atomic_compare_exchange_n(&h->populated, &have, to, 0, __ATOMIC_RELEASE,
                                                      __ATOMIC_ACQUIRE))
        ;
    return 0;
}

static int
ring_put(RingObject *self, const char *meta, uint32_t mlen, const char *body, uint64_t blen,
         uint64_t expiry_ns, uint64_t capacity, uint32_t uflags)
{
    ring_hdr_t *h = self->h;
    WriterObject *w = self->writer;
    if (w->fork_gen != g_fork_gen)
        return PUT_FORKED;
    uint64_t payload = (uint64_t)mlen + blen;
    uint64_t need = align_up(REC_HDR + payload, REC_ALIGN);
    if (payload > UINT32_MAX || need > self->size / 2)
        return PUT_TOO_BIG;
    uint64_t now = now_ns();
    int purged = 0;
    uint64_t tp, ts, pad;
    for (;;) {
        tp = load64(&h->tail_pos);
        ts = load64(&h->tail_seq);
        if (tp & CLOSED_BIT) {
            __atomic_store_n(&w->intent->total, 0, __ATOMIC_RELEASE);
            return PUT_CLOSED;
        }
        uint64_t hp = load64(&h->head_pos), hs = load64(&h->head_seq);
        uint64_t to_end = self->size - (tp & self->mask);
        pad = to_end < need ? to_end : 0;
        int full = capacity && ts - hs >= capacity;
        int nospace = tp + pad + need - hp > self->size;
        if (full || nospace) {
            /* Tail and head were read one after the other: meanwhile other
             * writers and a consumer may have moved head past this tail
             * snapshot, which reads as a huge backlog.  Refuse only on a
             * snapshot that held still across the head read. */
            if (load64(&h->tail_pos) != tp || load64(&h->head_pos) != hp)
                continue;
            if (!purged) {
                purged = 1;
                if (purge_expired(self, now))
                    continue;
            }
            __atomic_fetch_add(&h->full_total, 1, __ATOMIC_RELAXED);
            __atomic_store_n(&w->intent->total, 0, __ATOMIC_RELEASE); /* no claim in flight */
            return full ? PUT_FULL : PUT_NOSPACE;
        }
        /* On the first lap the claim ends at tp + pad + need; later laps
         * only reuse bytes that were populated on the first. */
        uint64_t populated = __atomic_load_n(&h->populated, __ATOMIC_ACQUIRE);
        if (populated < self->size && tp + pad + need > populated && ring_populate(self, tp + pad + need) != 0) {
            __atomic_fetch_add(&h->full_total, 1, __ATOMIC_RELAXED);
            __atomic_store_n(&w->intent->total, 0, __ATOMIC_RELEASE);
            return PUT_NOMEM;
        }
        intent_t *in = w->intent;
        __atomic_store_n(&in->iseq, in->iseq + 1, __ATOMIC_RELAXED); /* odd: writing */
        __atomic_thread_fence(__ATOMIC_RELEASE);
        in->ring_id = h->ring_id;
        in->pos = tp;
        in->total = pad + need;
        __atomic_store_n(&in->iseq, in->iseq + 1, __ATOMIC_RELEASE); /* even: valid */
        FAULT(FAULT_AFTER_INTENT);
        if (cas128(&h->tail_pos, tp, ts, tp + pad + need, ts + 1))
            break;
    }
    FAULT(FAULT_AFTER_CLAIM);
    uint64_t p = tp;
    if (pad) {
        rec_t *pr = (rec_t *)(self->data + (p & self->mask));
        pr->len = (uint32_t)pad;
        __atomic_store_n(&pr->seal, seal_of(h, p, ST_PAD), __ATOMIC_RELEASE);
        p += pad;
        FAULT(FAULT_AFTER_PAD);
    }
    rec_t *r = (rec_t *)(self->data + (p & self->mask));
    r->len = (uint32_t)payload;
    r->flags = uflags;
    r->pid = w->pid;
    r->slot = w->slot;
    r->gen = w->gen;
    r->deadline_ns = now + expiry_ns;
    r->sent_ns = now;
    __atomic_store_n(&h->last_put_ns, now, __ATOMIC_RELAXED);
    r->meta_len = mlen;
    __atomic_store_n(&r->seal, seal_of(h, p, ST_WRITING), __ATOMIC_RELEASE);
    FAULT(FAULT_AFTER_HEADER);
    char *dst = (char *)r + REC_HDR;
    if (mlen)
        memcpy(dst, meta, mlen);
    if (blen)
        memcpy(dst + mlen, body, blen);
    FAULT(FAULT_BEFORE_COMMIT);
    uint64_t writing = seal_of(h, p, ST_WRITING);
    /* A recoverer only rewrites records of dead writers, so this CAS cannot
     * fail while we live; it is a CAS so that the rule is enforced, not hoped. */
    __atomic_compare_exchange_n(&r->seal, &writing, seal_of(h, p, ST_READY), 0,
                                __ATOMIC_RELEASE, __ATOMIC_RELAXED);
    /* The claim is resolved: an intent is only meaningful while in flight. */
    __atomic_store_n(&w->intent->total, 0, __ATOMIC_RELEASE);
    /* Dekker with the waiters: our seal store must be visible before we read
     * their counters, and their counter increments before they re-check. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(&h->futex_waiters, __ATOMIC_RELAXED)) {
        __atomic_fetch_add(&h->wake_seq, 1, __ATOMIC_SEQ_CST);
        futex_wake_all(&h->wake_seq);
    }
    return __atomic_load_n(&h->fifo_waiters, __ATOMIC_RELAXED) ? PUT_WAKE : PUT_OK;
}

static PyObject *
Ring_put(RingObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    CHECK_RING(self);
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "put(body, meta, expiry_ns, capacity, flags)");
        return NULL;
    }
    if (!self->writer) {
        PyErr_SetString(PyExc_TypeError, "this ring handle has no writer");
        return NULL;
    }
    if (!PyBytes_Check(args[0]) || (args[1] != Py_None && !PyBytes_Check(args[1]))) {
        PyErr_SetString(PyExc_TypeError, "body must be bytes and meta bytes or None");
        return NULL;
    }
    unsigned long long expiry_ns = PyLong_AsUnsignedLongLong(args[2]);
    unsigned long long capacity = PyLong_AsUnsignedLongLong(args[3]);
    unsigned long flags = PyLong_AsUnsignedLong(args[4]);
    if (PyErr_Occurred())
        return NULL;
    const char *meta = NULL;
    Py_ssize_t mlen = 0;
    if (args[1] != Py_None) {
        meta = PyBytes_AS_STRING(args[1]);
        mlen = PyBytes_GET_SIZE(args[1]);
        if (mlen > UINT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "meta too large");
            return NULL;
        }
    }
    int rc = ring_put(self, meta, (uint32_t)mlen, PyBytes_AS_STRING(args[0]),
                      (uint64_t)PyBytes_GET_SIZE(args[0]), expiry_ns, capacity, (uint32_t)flags);
    return PyLong_FromLong(rc);
}

/* One attempt at the head.  Returns 1 with *out set, 0 when empty,
 * -1 when the head record is not ready (writer in progress or dead),
 * -2 on a Python error. */
static int
ring_take(RingObject *self, uint64_t now, PyObject **out)
{
    ring_hdr_t *h = self->h;
    for (;;) {
        uint64_t hp = load64(&h->head_pos), hs = load64(&h->head_seq);
        uint64_t tp = load64(&h->tail_pos) & ~CLOSED_BIT;
        if (hp >= tp)
            return 0;
        rec_t *r = (rec_t *)(self->data + (hp & self->mask));
        uint64_t seal = load64(&r->seal);
        if (seal == seal_of(h, hp, ST_PAD) || seal == seal_of(h, hp, ST_SKIP)) {
            uint32_t skip = r->len;
            __atomic_thread_fence(__ATOMIC_ACQUIRE);
            if (load64(&r->seal) != seal)
                continue;
            cas128(&h->head_pos, hp, hs, hp + skip, hs + (seal == seal_of(h, hp, ST_SKIP)));
            continue;
        }
        if (seal != seal_of(h, hp, ST_READY))
            return -1;
        uint32_t len = r->len, mlen = r->meta_len, flags = r->flags;
        uint64_t deadline = r->deadline_ns, sent = r->sent_ns;
        uint64_t total = align_up(REC_HDR + len, REC_ALIGN);
        if (mlen > len || (hp & self->mask) + total > self->size) {
            /* Either another consumer took the record and a producer reused
             * the bytes after we read the seal (head has moved: retry), or
             * the mapping is corrupt: refuse rather than read out of bounds. */
            if (load64(&h->head_pos) != hp)
                continue;
            PyErr_SetString(PyExc_RuntimeError, "corrupt ring record");
            return -2;
        }
        if (deadline <= now) {
            if (cas128(&h->head_pos, hp, hs, hp + total, hs + 1))
                __atomic_fetch_add(&h->expired_total, 1, __ATOMIC_RELAXED);
            continue;
        }
        const char *src = (const char *)r + REC_HDR;
        PyObject *body = PyBytes_FromStringAndSize(src + mlen, len - mlen);
        if (!body)
            return -2;
        PyObject *meta;
        if (mlen) {
            meta = PyBytes_FromStringAndSize(src, mlen);
            if (!meta) {
                Py_DECREF(body);
                return -2;
            }
        } else {
            meta = Py_None;
            Py_INCREF(meta);
        }
        FAULT(FAULT_CONSUMER_COPIED);
        /* The copy is only ours if head has not moved: nobody may reuse the
         * bytes before head passes them, and head positions never repeat. */
        if (!cas128(&h->head_pos, hp, hs, hp + total, hs + 1)) {
            Py_DECREF(body);
            Py_DECREF(meta);
            continue;
        }
        FAULT(FAULT_CONSUMER_TAKEN);
        PyObject *t = PyTuple_New(4);
        if (!t) {
            Py_DECREF(body);
            Py_DECREF(meta);
            return -2;
        }
        PyTuple_SET_ITEM(t, 0, PyLong_FromUnsignedLong(flags));
        PyTuple_SET_ITEM(t, 1, body);
        PyTuple_SET_ITEM(t, 2, meta);
        PyTuple_SET_ITEM(t, 3, PyLong_FromUnsignedLongLong(deadline));
        (void)sent;
        *out = t;
        return 1;
    }
}

/* get() -> (flags, body, meta|None, deadline_ns) | None (empty) | False (head not ready) */
static PyObject *
Ring_get(RingObject *self, PyObject *unused)
{
    CHECK_RING(self);
    PyObject *out = NULL;
    int rc = ring_take(self, now_ns(), &out);
    if (rc == 1)
        return out;
    if (rc == 0)
        Py_RETURN_NONE;
    if (rc == -1)
        Py_RETURN_FALSE;
    return NULL;
}

/* get_many(n) -> (list of records, status) where status is None when the
 * ring ran empty, False when the head is not ready, True when n was reached. */
static PyObject *
Ring_get_many(RingObject *self, PyObject *arg)
{
    CHECK_RING(self);
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n < 0 && PyErr_Occurred())
        return NULL;
    PyObject *list = PyList_New(0);
    if (!list)
        return NULL;
    uint64_t now = now_ns();
    PyObject *status = Py_True;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *out = NULL;
        int rc = ring_take(self, now, &out);
        if (rc == 1) {
            int e = PyList_Append(list, out);
            Py_DECREF(out);
            if (e < 0) {
                Py_DECREF(list);
                return NULL;
            }
            continue;
        }
        if (rc == -2) {
            Py_DECREF(list);
            return NULL;
        }
        status = rc == 0 ? Py_None : Py_False;
        break;
    }
    PyObject *res = PyTuple_Pack(2, list, status);
    Py_DECREF(list);
    return res;
}

/* True when the head record can be consumed right now (READY, PAD or SKIP). */
static int
ring_consumable(RingObject *self)
{
    ring_hdr_t *h = self->h;
    uint64_t hp = load64(&h->head_pos);
    uint64_t tp = load64(&h->tail_pos) & ~CLOSED_BIT;
    if (hp >= tp)
        return 0;
    uint64_t seal = load64(&((rec_t *)(self->data + (hp & self->mask)))->seal);
    return seal == seal_of(h, hp, ST_READY) || seal == seal_of(h, hp, ST_PAD) ||
           seal == seal_of(h, hp, ST_SKIP);
}

static PyObject *
Ring_has_data(RingObject *self, PyObject *unused)
{
    CHECK_RING(self);
    return PyBool_FromLong(ring_consumable(self));
}

/* head_state() -> (pos, state, pid, slot, gen, len) describing the record at
 * the head, where state is "empty", "ready", "pad", "skip", "writing" or
 * "unwritten" (claimed, but the writer has not written a header yet). */
static PyObject *
Ring_head_state(RingObject *self, PyObject *unused)
{
    CHECK_RING(self);
    ring_hdr_t *h = self->h;
    uint64_t hp = load64(&h->head_pos);
    uint64_t tp = load64(&h->tail_pos) & ~CLOSED_BIT;
    if (hp >= tp)
        return Py_BuildValue("(KsIIKI)", (unsigned long long)hp, "empty", 0u, 0u, 0ULL, 0u);
    rec_t *r = (rec_t *)(self->data + (hp & self->mask));
    uint64_t seal = load64(&r->seal);
    const char *state = "unwritten";
    if (seal == seal_of(h, hp, ST_READY)) state = "ready";
    else if (seal == seal_of(h, hp, ST_PAD)) state = "pad";
    else if (seal == seal_of(h, hp, ST_SKIP)) state = "skip";
    else if (seal == seal_of(h, hp, ST_WRITING)) state = "writing";
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    return Py_BuildValue("(KsIIKI)", (unsigned long long)hp, state, r->pid, r->slot,
                         (unsigned long long)r->gen, r->len);
}

/* recover(pos, total): make the claim [pos, pos+total) of a dead writer
 * skippable.  The caller has established that the writer is dead (its slot
 * lock is free).  total == 0 means "the record at pos has a WRITING header;
 * take its length from there"; otherwise it is the dead writer's intent.
 *
 * The walk starts at max(pos, head): bytes before head were consumed and may
 * already hold someone else's records.  Each step swaps {seal, len} with one
 * 16-byte CAS against the exact bytes it read, so a recoverer that was
 * preempted while the record was skipped, consumed and the bytes reused can
 * only fail, never scribble.  Returns True when nothing in the claim is left
 * unready. */
static PyObject *
Ring_recover(RingObject *self, PyObject *args)
{
    CHECK_RING(self);
    unsigned long long pos, total;
    if (!PyArg_ParseTuple(args, "KK", &pos, &total))
        return NULL;
    ring_hdr_t *h = self->h;
    for (int guard = 0; guard < 8; guard++) {
        uint64_t hp = load64(&h->head_pos);
        uint64_t tp = load64(&h->tail_pos) & ~CLOSED_BIT;
        uint64_t p = pos > hp ? pos : hp;
        uint64_t end = total ? pos + total : 0;
        if (total && p >= end)
            Py_RETURN_TRUE; /* already consumed */
        if (p >= tp)
            Py_RETURN_TRUE;
        rec_t *r = (rec_t *)(self->data + (p & self->mask));
        uint64_t seal = load64(&r->seal);
        uint64_t lenflags = __atomic_load_n((uint64_t *)&r->len, __ATOMIC_ACQUIRE);
        if (seal == seal_of(h, p, ST_PAD)) {
            if (!total || p + (uint32_t)lenflags >= end)
                Py_RETURN_TRUE;
            pos = p + (uint32_t)lenflags; /* the record follows the padding */
            total = end - pos;
            continue;
        }
        if (seal == seal_of(h, p, ST_READY) || seal == seal_of(h, p, ST_SKIP))
            Py_RETURN_TRUE;
        uint64_t skip;
        if (seal == seal_of(h, p, ST_WRITING))
            skip = align_up(REC_HDR + (uint32_t)lenflags, REC_ALIGN);
        else if (total)
            skip = end - p; /* from pos, or from where head entered the claim */
        else
            Py_RETURN_FALSE; /* nothing tells us the length */
        if (skip % REC_ALIGN || skip == 0 || p + skip > tp) {
            PyErr_SetString(PyExc_ValueError, "recovery span does not fit the claimed region");
            return NULL;
        }
        uint64_t new_lenflags = (lenflags & 0xffffffff00000000ULL) | (uint32_t)skip;
        if (cas128(&r->seal, seal, lenflags, seal_of(h, p, ST_SKIP), new_lenflags)) {
            __atomic_fetch_add(&h->recovered_total, 1, __ATOMIC_RELAXED);
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
            if (__atomic_load_n(&h->futex_waiters, __ATOMIC_RELAXED)) {
                __atomic_fetch_add(&h->wake_seq, 1, __ATOMIC_SEQ_CST);
                futex_wake_all(&h->wake_seq);
            }
            Py_RETURN_TRUE;
        }
        /* lost a race: look again */
    }
    Py_RETURN_FALSE;
}

/* discard_all() consumes every consumable record (flush).  Returns the number
 * of messages dropped; stops early at a record that is not ready. */
static PyObject *
Ring_discard_all(RingObject *self, PyObject *unused)
{
    CHECK_RING(self);
    ring_hdr_t *h = self->h;
    uint64_t n = 0;
    for (;;) {
        uint64_t hp = load64(&h->head_pos), hs = load64(&h->head_seq);
        uint64_t tp = load64(&h->tail_pos) & ~CLOSED_BIT;
        if (hp >= tp)
            break;
        rec_t *r = (rec_t *)(self->data + (hp & self->mask));
        uint64_t seal = load64(&r->seal);
        uint64_t step;
        int counted;
        if (seal == seal_of(h, hp, ST_PAD) || seal == seal_of(h, hp, ST_SKIP)) {
            step = r->len;
            counted = seal == seal_of(h, hp, ST_SKIP);
        } else if (seal == seal_of(h, hp, ST_READY)) {
            step = align_up(REC_HDR + r->len, REC_ALIGN);
            counted = 1;
        } else {
            break;
        }
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (load64(&r->seal) != seal)
            continue;
        if (cas128(&h->head_pos, hp, hs, hp + step, hs + counted) && seal == seal_of(h, hp, ST_READY))
            n++;
    }
    return PyLong_FromUnsignedLongLong(n);
}

/* reset() drops everything up to the current tail, committed or not.  Only
 * for the case recovery cannot resolve (two writers died in the same claim
 * window); at-most-once delivery permits the loss. */
static PyObject *
Ring_reset(RingObject *self, PyObject *unused)
{
    CHECK_RING(self);
    ring_hdr_t *h = self->h;
    for (;;) {
        uint64_t hp, hs, tp, ts;
        load_pair(&h->head_pos, &hp, &hs);
        load_pair(&h->tail_pos, &tp, &ts);
        tp &= ~CLOSED_BIT;
        if (hp == tp && hs == ts)
            break;
        if (cas128(&h->head_pos, hp, hs, tp, ts))
            break;
    }
    Py_RETURN_NONE;
}

/* purge() consumes expired records (and padding) at the head without a
 * reader, so that a bus nobody reads drains itself and `status` never counts
 * an expired message as pending.  Returns how many moves of head it made. */
static PyObject *
Ring_purge(RingObject *self, PyObject *unused)
{
    CHECK_RING(self);
    return PyLong_FromUnsignedLongLong(purge_expired(self, now_ns()));
}

/* damage() checks the header words that every put and get trusts: None if
 * they are consistent, else a sentence saying what is wrong.  A consistent
 * header keeps head <= tail, at most one lap of bytes between them, and no
 * more claims than 16-byte records fit in those bytes. */
static PyObject *
Ring_damage(RingObject *self, PyObject *unused)
{
    CHECK_RING(self);
    ring_hdr_t *h = self->h;
    uint64_t hp, hs, tp, ts;
    for (int i = 0; i < 1000; i++) {
        load_pair(&h->head_pos, &hp, &hs);
        load_pair(&h->tail_pos, &tp, &ts);
        tp &= ~CLOSED_BIT;
        uint64_t hp2, hs2;
        load_pair(&h->head_pos, &hp2, &hs2);
        if (hp2 == hp && hs2 == hs)
            break; /* a snapshot no consumer moved under us */
    }
    char buf[200];
    if (hp % REC_ALIGN || tp % REC_ALIGN)
        snprintf(buf, sizeof buf, "misaligned head %llu or tail %llu", (unsigned long long)hp, (unsigned long long)tp);
    else if (hp > tp)
        snprintf(buf, sizeof buf, "head %llu is past tail %llu", (unsigned long long)hp, (unsigned long long)tp);
    else if (tp - hp > self->size)
        snprintf(buf, sizeof buf, "%llu bytes between head and tail in a %llu byte ring",
                 (unsigned long long)(tp - hp), (unsigned long long)self->size);
    else if (hs > ts)
        snprintf(buf, sizeof buf, "head claim %llu is past tail claim %llu", (unsigned long long)hs, (unsigned long long)ts);
    else if (ts - hs > (tp - hp) / REC_ALIGN)
        snprintf(buf, sizeof buf, "%llu claims pending in %llu bytes", (unsigned long long)(ts - hs),
                 (unsigned long long)(tp - hp));
    else
        Py_RETURN_NONE;
    return PyUnicode_FromString(buf);
}

/* repair() makes a damaged ring usable again: head and tail both move to
 * one aligned position past either, with the larger claim count, so every
 * pending record (whatever its state) is dropped and no word is trusted that
 * damage() rejected.  A producer racing with it fails its CAS and retries. */
static PyObject *
Ring_repair(RingObject *self, PyObject *unused)
{
    CHECK_RING(self);
    ring_hdr_t *h = self->h;
    for (;;) {
        uint64_t hp, hs, tp, ts;
        load_pair(&h->head_pos, &hp, &hs);
        load_pair(&h->tail_pos, &tp, &ts);
        uint64_t closed = tp & CLOSED_BIT;
        tp &= ~CLOSED_BIT;
        uint64_t pos = align_up(hp > tp ? hp : tp, REC_ALIGN);
        uint64_t seq = hs > ts ? hs : ts;
        if (!cas128(&h->tail_pos, tp | closed, ts, pos | closed, seq))
            continue;
        for (;;) {
            load_pair(&h->head_pos, &hp, &hs);
            if (cas128(&h->head_pos, hp, hs, pos, seq))
                break;
        }
        break;
    }
    __atomic_fetch_add(&h->wake_seq, 1, __ATOMIC_SEQ_CST);
    futex_wake_all(&h->wake_seq);
    Py_RETURN_NONE;
}

static PyObject *
Ring_close(RingObject *self, PyObject *arg)
{
    CHECK_RING(self);
    unsigned long long closer = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    ring_hdr_t *h = self->h;
    __atomic_store_n(&h->closer, closer + 1, __ATOMIC_RELEASE);
    __atomic_fetch_or(&h->tail_pos, CLOSED_BIT, __ATOMIC_SEQ_CST);
    __atomic_fetch_add(&h->wake_seq, 1, __ATOMIC_SEQ_CST);
    futex_wake_all(&h->wake_seq);
    Py_RETURN_NONE;
}

/* retire(idle_ns) closes the ring if it is empty and nothing was put for
 * idle_ns.  The CAS on tail makes "empty" and "closed" one step, so no put
 * can slip in between.  Returns True if the ring is closed afterwards. */
static PyObject *
Ring_retire(RingObject *self, PyObject *args)
{
    CHECK_RING(self);
    unsigned long long idle_ns;
    unsigned int closer;
    if (!PyArg_ParseTuple(args, "KI", &idle_ns, &closer))
        return NULL;
    ring_hdr_t *h = self->h;
    uint64_t tp = load64(&h->tail_pos), ts = load64(&h->tail_seq);
    if (tp & CLOSED_BIT)
        Py_RETURN_TRUE;
    uint64_t last = __atomic_load_n(&h->last_put_ns, __ATOMIC_RELAXED);
    if (!last)
        last = h->created_ns;
    if (load64(&h->head_pos) != tp || now_ns() - last < idle_ns)
        Py_RETURN_FALSE;
    __atomic_store_n(&h->closer, (uint64_t)closer + 1, __ATOMIC_RELEASE);
    if (!cas128(&h->tail_pos, tp, ts, tp | CLOSED_BIT, ts))
        Py_RETURN_FALSE;
    __atomic_fetch_add(&h->wake_seq, 1, __ATOMIC_SEQ_CST);
    futex_wake_all(&h->wake_seq);
    Py_RETURN_TRUE;
}

static PyObject *
Ring_get_closer(RingObject *self, void *closure)
{
    CHECK_RING(self);
    uint64_t c = __atomic_load_n(&self->h->closer, __ATOMIC_ACQUIRE);
    if (!c)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong(c - 1);
}

static PyObject *
Ring_get_closed(RingObject *self, void *closure)
{
    CHECK_RING(self);
    return PyBool_FromLong((load64(&self->h->tail_pos) & CLOSED_BIT) != 0);
}

static PyObject *
Ring_pending(RingObject *self, void *closure)
{
    CHECK_RING(self);
    ring_hdr_t *h = self->h;
    uint64_t hs = load64(&h->head_seq), ts = load64(&h->tail_seq);
    return PyLong_FromUnsignedLongLong(ts > hs ? ts - hs : 0);
}

static PyObject *
Ring_get_fifo_waiters(RingObject *self, void *closure)
{
    CHECK_RING(self);
    return PyLong_FromUnsignedLong(__atomic_load_n(&self->h->fifo_waiters, __ATOMIC_RELAXED));
}

static PyObject *
Ring_get_futex_waiters(RingObject *self, void *closure)
{
    CHECK_RING(self);
    return PyLong_FromUnsignedLong(__atomic_load_n(&self->h->futex_waiters, __ATOMIC_RELAXED));
}

static PyObject *
Ring_get_ring_id(RingObject *self, void *closure)
{
    CHECK_RING(self);
    return PyLong_FromUnsignedLongLong(self->h->ring_id);
}

static PyObject *
Ring_get_owner(RingObject *self, void *closure)
{
    CHECK_RING(self);
    if (self->h->owner_slot == 0xffffffffu)
        Py_RETURN_NONE;
    return Py_BuildValue("(IK)", self->h->owner_slot, (unsigned long long)self->h->owner_gen);
}

static PyObject *
Ring_get_key(RingObject *self, void *closure)
{
    CHECK_RING(self);
    uint32_t n = self->h->key_len;
    if (n > sizeof(self->h->key))
        n = sizeof(self->h->key);
    return PyUnicode_DecodeUTF8(self->h->key, n, "replace");
}

static PyObject *
Ring_get_data_size(RingObject *self, void *closure)
{
    CHECK_RING(self);
    return PyLong_FromUnsignedLongLong(self->size);
}

static int
slot_arg(PyObject *arg, unsigned *slot)
{
    long v = PyLong_AsLong(arg);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < 0 || v >= (long)MAX_SLOTS) {
        PyErr_SetString(PyExc_ValueError, "slot out of range");
        return -1;
    }
    *slot = (unsigned)v;
    return 0;
}

/* fifo_add(slot): this slot parks on its wake FIFO for this ring. */
static PyObject *
Ring_fifo_add(RingObject *self, PyObject *arg)
{
    CHECK_RING(self);
    unsigned slot;
    if (slot_arg(arg, &slot) < 0)
        return NULL;
    uint64_t bit = 1ULL << (slot % 64);
    uint64_t old = __atomic_fetch_or(&self->h->fifo_bits[slot / 64], bit, __ATOMIC_SEQ_CST);
    if (!(old & bit))
        __atomic_fetch_add(&self->h->fifo_waiters, 1, __ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

static PyObject *
Ring_fifo_remove(RingObject *self, PyObject *arg)
{
    CHECK_RING(self);
    unsigned slot;
    if (slot_arg(arg, &slot) < 0)
        return NULL;
    uint64_t bit = 1ULL << (slot % 64);
    uint64_t old = __atomic_fetch_and(&self->h->fifo_bits[slot / 64], ~bit, __ATOMIC_SEQ_CST);
    if (old & bit)
        __atomic_fetch_sub(&self->h->fifo_waiters, 1, __ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

static PyObject *
Ring_fifo_slots(RingObject *self, PyObject *unused)
{
    CHECK_RING(self);
    PyObject *list = PyList_New(0);
    if (!list)
        return NULL;
    for (unsigned w = 0; w < MAX_SLOTS / 64; w++) {
        uint64_t bits = __atomic_load_n(&self->h->fifo_bits[w], __ATOMIC_ACQUIRE);
        while (bits) {
            unsigned b = (unsigned)__builtin_ctzll(bits);
            bits &= bits - 1;
            PyObject *v = PyLong_FromUnsignedLong(w * 64 + b);
            if (!v || PyList_Append(list, v) < 0) {
                Py_XDECREF(v);
                Py_DECREF(list);
                return NULL;
            }
            Py_DECREF(v);
        }
    }
    return list;
}

/* notify(): wake threads parked in wait() on this ring.  Used after an
 * in-process drain moved records into local buffers. */
static PyObject *
Ring_notify(RingObject *self, PyObject *unused)
{
    CHECK_RING(self);
    ring_hdr_t *h = self->h;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(&h->futex_waiters, __ATOMIC_RELAXED)) {
        __atomic_fetch_add(&h->wake_seq, 1, __ATOMIC_SEQ_CST);
        futex_wake_all(&h->wake_seq);
    }
    Py_RETURN_NONE;
}

static PyObject *
Ring_stats(RingObject *self, PyObject *unused)
{
    CHECK_RING(self);
    ring_hdr_t *h = self->h;
    uint64_t hp = load64(&h->head_pos), hs = load64(&h->head_seq);
    uint64_t tp = load64(&h->tail_pos), ts = load64(&h->tail_seq);
    uint64_t oldest = 0;
    /* Age of the oldest message: the first READY record from the head. */
    uint64_t p = hp, end = tp & ~CLOSED_BIT;
    for (int i = 0; i < 64 && p < end; i++) {
        rec_t *r = (rec_t *)(self->data + (p & self->mask));
        uint64_t seal = load64(&r->seal);
        if (seal == seal_of(h, p, ST_READY)) {
            oldest = r->sent_ns;
            break;
        }
        if (seal == seal_of(h, p, ST_PAD) || seal == seal_of(h, p, ST_SKIP)) {
            p += r->len;
            continue;
        }
        break;
    }
    return Py_BuildValue(
        "{sKsKsKsKsKsKsKsKsKsKsIsIsO}",
        "sent", (unsigned long long)ts,
        "pending", (unsigned long long)(ts > hs ? ts - hs : 0),
        "bytes_used", (unsigned long long)((tp & ~CLOSED_BIT) - hp),
        "data_size", (unsigned long long)self->size,
        "full", (unsigned long long)__atomic_load_n(&h->full_total, __ATOMIC_RELAXED),
        "expired", (unsigned long long)__atomic_load_n(&h->expired_total, __ATOMIC_RELAXED),
        "recovered", (unsigned long long)__atomic_load_n(&h->recovered_total, __ATOMIC_RELAXED),
        "oldest_sent_ns", (unsigned long long)oldest,
        "created_ns", (unsigned long long)h->created_ns,
        "last_put_ns", (unsigned long long)__atomic_load_n(&h->last_put_ns, __ATOMIC_RELAXED),
        "fifo_waiters", __atomic_load_n(&h->fifo_waiters, __ATOMIC_RELAXED),
        "futex_waiters", __atomic_load_n(&h->futex_waiters, __ATOMIC_RELAXED),
        "closed", (tp & CLOSED_BIT) ? Py_True : Py_False);
}

static PyMethodDef Ring_methods[] = {
    {"put", (PyCFunction)(void (*)(void))Ring_put, METH_FASTCALL,
     "put(body, meta, expiry_ns, capacity, flags) -> status"},
    {"get", (PyCFunction)Ring_get, METH_NOARGS,
     "get() -> (flags, body, meta, deadline_ns) | None if empty | False if the head is not ready"},
    {"get_many", (PyCFunction)Ring_get_many, METH_O, "get_many(n) -> (records, status)"},
    {"has_data", (PyCFunction)Ring_has_data, METH_NOARGS, "head record is consumable"},
    {"head_state", (PyCFunction)Ring_head_state, METH_NOARGS, "describe the head record"},
    {"recover", (PyCFunction)Ring_recover, METH_VARARGS, "recover(pos, total): skip a dead writer's record"},
    {"discard_all", (PyCFunction)Ring_discard_all, METH_NOARGS, "drop every consumable record"},
    {"reset", (PyCFunction)Ring_reset, METH_NOARGS, "drop everything up to the tail"},
    {"purge", (PyCFunction)Ring_purge, METH_NOARGS, "consume expired records at the head"},
    {"repair", (PyCFunction)Ring_repair, METH_NOARGS, "drop everything and realign head and tail"},
    {"damage", (PyCFunction)Ring_damage, METH_NOARGS, "None, or what is inconsistent in the header"},
    {"close", (PyCFunction)Ring_close, METH_O, "close(closer_id): refuse further puts"},
    {"retire", (PyCFunction)Ring_retire, METH_VARARGS, "retire(idle_ns, closer_slot): close if empty and idle"},
    {"fifo_add", (PyCFunction)Ring_fifo_add, METH_O, "register a slot parked on its FIFO"},
    {"fifo_remove", (PyCFunction)Ring_fifo_remove, METH_O, "unregister a parked slot"},
    {"fifo_slots", (PyCFunction)Ring_fifo_slots, METH_NOARGS, "slots parked on this ring"},
    {"notify", (PyCFunction)Ring_notify, METH_NOARGS, "wake threads parked in wait()"},
    {"stats", (PyCFunction)Ring_stats, METH_NOARGS, "counters and gauges"},
    {NULL}
};

static PyGetSetDef Ring_getset[] = {
    {"closed", (getter)Ring_get_closed, NULL, "ring refuses puts", NULL},
    {"closer", (getter)Ring_get_closer, NULL, "slot that closed the ring, or None", NULL},
    {"pending", (getter)Ring_pending, NULL, "claims not yet consumed", NULL},
    {"fifo_waiters", (getter)Ring_get_fifo_waiters, NULL, NULL, NULL},
    {"futex_waiters", (getter)Ring_get_futex_waiters, NULL, NULL, NULL},
    {"ring_id", (getter)Ring_get_ring_id, NULL, NULL, NULL},
    {"owner", (getter)Ring_get_owner, NULL, "(slot, gen) or None", NULL},
    {"key", (getter)Ring_get_key, NULL, "the ring key (channel or prefix!)", NULL},
    {"data_size", (getter)Ring_get_data_size, NULL, NULL, NULL},
    {NULL}
};

static PyTypeObject RingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmchannels._shm.Ring",
    .tp_basicsize = sizeof(RingObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Ring_init,
    .tp_dealloc = (destructor)Ring_dealloc,
    .tp_methods = Ring_methods,
    .tp_getset = Ring_getset,
    .tp_doc = "A lock-free MPMC record ring in a shared mapping.",
};

/* ring_init(mem, data_size, ring_id, salt, owner_slot, owner_gen, key) */
static PyObject *
shm_ring_init(PyObject *mod, PyObject *args)
{
    PyObject *mem;
    unsigned long long data_size, ring_id, salt, owner_gen;
    long owner_slot;
    const char *key;
    Py_ssize_t key_len;
    if (!PyArg_ParseTuple(args, "OKKKlKs#", &mem, &data_size, &ring_id, &salt, &owner_slot,
                          &owner_gen, &key, &key_len))
        return NULL;
    if (data_size < 4096 || (data_size & (data_size - 1)) || data_size > (1ULL << 32)) {
        PyErr_SetString(PyExc_ValueError, "ring data size must be a power of two between 4 KiB and 4 GiB");
        return NULL;
    }
    if (key_len > 124) {
        PyErr_SetString(PyExc_ValueError, "ring key too long");
        return NULL;
    }
    Py_buffer v;
    if (PyObject_GetBuffer(mem, &v, PyBUF_WRITABLE) < 0)
        return NULL;
    if ((uint64_t)v.len < RING_HEADER_SIZE + data_size || (uintptr_t)v.buf % 64) {
        PyBuffer_Release(&v);
        PyErr_SetString(PyExc_ValueError, "mapping too small for the ring");
        return NULL;
    }
    ring_hdr_t *h = (ring_hdr_t *)v.buf;
    memset(h, 0, RING_HEADER_SIZE);
    h->version = RING_VERSION;
    h->header_size = RING_HEADER_SIZE;
    h->data_size = data_size;
    h->salt = salt | 1; /* never zero: fresh zeroed memory must not look sealed */
    h->ring_id = ring_id;
    h->created_ns = now_ns();
    h->owner_slot = owner_slot < 0 ? 0xffffffffu : (uint32_t)owner_slot;
    h->owner_gen = owner_gen;
    h->key_len = (uint32_t)key_len;
    memcpy(h->key, key, (size_t)key_len);
    __atomic_store_n(&h->magic, RING_MAGIC, __ATOMIC_RELEASE);
    PyBuffer_Release(&v);
    Py_RETURN_NONE;
}

/* wait_enter(rings) -> tuple of wake_seq values; registers as a futex waiter
 * on each ring.  Call wait(rings, seqs, timeout) after re-checking for data,
 * and always wait_leave(rings). */
static int
rings_from_seq(PyObject *seq, RingObject **rings, Py_ssize_t *n)
{
    PyObject *fast = PySequence_Fast(seq, "rings must be a sequence");
    if (!fast)
        return -1;
    Py_ssize_t len = PySequence_Fast_GET_SIZE(fast);
    if (len < 1 || len > MAX_WAIT_RINGS) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "wait on 1 to 64 rings");
        return -1;
    }
    for (Py_ssize_t i = 0; i < len; i++) {
        PyObject *o = PySequence_Fast_GET_ITEM(fast, i);
        if (!PyObject_TypeCheck(o, &RingType) || !((RingObject *)o)->h) {
            Py_DECREF(fast);
            PyErr_SetString(PyExc_TypeError, "wait needs initialised Ring objects");
            return -1;
        }
        rings[i] = (RingObject *)o;
    }
    *n = len;
    Py_DECREF(fast);
    return 0;
}

static PyObject *
shm_wait_enter(PyObject *mod, PyObject *arg)
{
    RingObject *rings[MAX_WAIT_RINGS];
    Py_ssize_t n;
    if (rings_from_seq(arg, rings, &n) < 0)
        return NULL;
    PyObject *seqs = PyTuple_New(n);
    if (!seqs)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++)
        __atomic_fetch_add(&rings[i]->h->futex_waiters, 1, __ATOMIC_SEQ_CST);
    for (Py_ssize_t i = 0; i < n; i++)
        PyTuple_SET_ITEM(seqs, i, PyLong_FromUnsignedLong(
            __atomic_load_n(&rings[i]->h->wake_seq, __ATOMIC_SEQ_CST)));
    return seqs;
}

static PyObject *
shm_wait_leave(PyObject *mod, PyObject *arg)
{
    RingObject *rings[MAX_WAIT_RINGS];
    Py_ssize_t n;
    if (rings_from_seq(arg, rings, &n) < 0)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++)
        __atomic_fetch_sub(&rings[i]->h->futex_waiters, 1, __ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

struct futex_waitv_arg {
    uint64_t val;
    uint64_t uaddr;
    uint32_t flags;
    uint32_t __reserved;
};
#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449
#endif
#define FUTEX2_SIZE_U32_ 0x02

static int g_have_waitv = -1; /* unknown until first use */

/* wait(rings, seqs, timeout) -> True if woken or data may be there, False on
 * timeout.  Releases the GIL.  EINTR returns True so that Python runs its
 * signal handlers and re-checks. */
static PyObject *
shm_wait(PyObject *mod, PyObject *args)
{
    PyObject *rseq, *sseq;
    double timeout;
    if (!PyArg_ParseTuple(args, "OOd", &rseq, &sseq, &timeout))
        return NULL;
    RingObject *rings[MAX_WAIT_RINGS];
    Py_ssize_t n;
    if (rings_from_seq(rseq, rings, &n) < 0)
        return NULL;
    PyObject *sf = PySequence_Fast(sseq, "seqs must be a sequence");
    if (!sf)
        return NULL;
    if (PySequence_Fast_GET_SIZE(sf) != n) {
        Py_DECREF(sf);
        PyErr_SetString(PyExc_ValueError, "one seq per ring");
        return NULL;
    }
    struct futex_waitv_arg w[MAX_WAIT_RINGS];
    for (Py_ssize_t i = 0; i < n; i++) {
        w[i].val = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(sf, i));
        w[i].uaddr = (uint64_t)(uintptr_t)&rings[i]->h->wake_seq;
        w[i].flags = FUTEX2_SIZE_U32_;
        w[i].__reserved = 0;
    }
    Py_DECREF(sf);
    if (PyErr_Occurred())
        return NULL;
    if (timeout < 0)
        timeout = 0;
    long rc;
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    if (n > 1 && g_have_waitv != 0) {
        struct timespec deadline;
        clock_gettime(CLOCK_MONOTONIC, &deadline);
        double whole = (double)(long long)timeout;
        deadline.tv_sec += (time_t)whole;
        deadline.tv_nsec += (long)((timeout - whole) * 1e9);
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec += 1;
            deadline.tv_nsec -= 1000000000L;
        }
        rc = syscall(SYS_futex_waitv, w, (unsigned)n, 0, &deadline, CLOCK_MONOTONIC);
        err = rc < 0 ? errno : 0;
        if (rc < 0 && err == ENOSYS)
            g_have_waitv = 0;
        else
            g_have_waitv = 1;
    } else {
        rc = -1;
        err = ENOSYS;
    }
    if (rc < 0 && err == ENOSYS) {
        /* One ring, or an old kernel: wait on the first ring.  With several
         * rings the caller bounds the timeout, so others are re-checked. */
        struct timespec rel;
        double t = n > 1 && timeout > 0.05 ? 0.05 : timeout;
        rel.tv_sec = (time_t)t;
        rel.tv_nsec = (long)((t - (double)rel.tv_sec) * 1e9);
        rc = syscall(SYS_futex, (uint32_t *)(uintptr_t)w[0].uaddr, FUTEX_WAIT, (uint32_t)w[0].val,
                     &rel, NULL, 0);
        err = rc < 0 ? errno : 0;
    }
    Py_END_ALLOW_THREADS
    if (rc < 0 && err == ETIMEDOUT)
        Py_RETURN_FALSE;
    Py_RETURN_TRUE;
}

/* ------------------------------------------------------------------ */
/* Mem: atomics on words of a shared mapping                            */

typedef struct {
    PyObject_HEAD
    Py_buffer view;
} MemObject;

static int
Mem_init(MemObject *self, PyObject *args, PyObject *kwds)
{
    PyObject *mem;
    if (!PyArg_ParseTuple(args, "O", &mem))
        return -1;
    if (self->view.obj) {
        PyErr_SetString(PyExc_RuntimeError, "Mem already initialised");
        return -1;
    }
    if (PyObject_GetBuffer(mem, &self->view, PyBUF_WRITABLE) < 0)
        return -1;
    if ((uintptr_t)self->view.buf % 8) {
        PyBuffer_Release(&self->view);
        PyErr_SetString(PyExc_ValueError, "mapping not 8-byte aligned");
        return -1;
    }
    return 0;
}

static void
Mem_dealloc(MemObject *self)
{
    if (self->view.obj)
        PyBuffer_Release(&self->view);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static uint64_t *
mem_word(MemObject *self, PyObject *off_obj)
{
    if (!self->view.obj) {
        PyErr_SetString(PyExc_ValueError, "Mem not initialised");
        return NULL;
    }
    Py_ssize_t off = PyLong_AsSsize_t(off_obj);
    if (off == -1 && PyErr_Occurred())
        return NULL;
    if (off < 0 || off % 8 || off + 8 > self->view.len) {
        PyErr_SetString(PyExc_IndexError, "word offset out of range or unaligned");
        return NULL;
    }
    return (uint64_t *)((char *)self->view.buf + off);
}

static PyObject *
Mem_load(MemObject *self, PyObject *arg)
{
    uint64_t *p = mem_word(self, arg);
    if (!p)
        return NULL;
    return PyLong_FromUnsignedLongLong(__atomic_load_n(p, __ATOMIC_ACQUIRE));
}

static PyObject *
Mem_store(MemObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "store(offset, value)");
        return NULL;
    }
    uint64_t *p = mem_word(self, args[0]);
    if (!p)
        return NULL;
    unsigned long long v = PyLong_AsUnsignedLongLong(args[1]);
    if (PyErr_Occurred())
        return NULL;
    __atomic_store_n(p, v, __ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

static PyObject *
Mem_cas(MemObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "cas(offset, expected, new)");
        return NULL;
    }
    uint64_t *p = mem_word(self, args[0]);
    if (!p)
        return NULL;
    unsigned long long expected = PyLong_AsUnsignedLongLong(args[1]);
    unsigned long long nw = PyLong_AsUnsignedLongLong(args[2]);
    if (PyErr_Occurred())
        return NULL;
    uint64_t e = expected;
    return PyBool_FromLong(__atomic_compare_exchange_n(p, &e, (uint64_t)nw, 0, __ATOMIC_SEQ_CST,
                                                       __ATOMIC_SEQ_CST));
}

static PyObject *
Mem_add(MemObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "add(offset, delta) -> previous value");
        return NULL;
    }
    uint64_t *p = mem_word(self, args[0]);
    if (!p)
        return NULL;
    long long d = PyLong_AsLongLong(args[1]);
    if (d == -1 && PyErr_Occurred())
        return NULL;
    return PyLong_FromUnsignedLongLong(__atomic_fetch_add(p, (uint64_t)d, __ATOMIC_SEQ_CST));
}

static PyMethodDef Mem_methods[] = {
    {"load", (PyCFunction)Mem_load, METH_O, "load(offset) -> u64 (acquire)"},
    {"store", (PyCFunction)(void (*)(void))Mem_store, METH_FASTCALL, "store(offset, value) (seq_cst)"},
    {"cas", (PyCFunction)(void (*)(void))Mem_cas, METH_FASTCALL, "cas(offset, expected, new) -> bool"},
    {"add", (PyCFunction)(void (*)(void))Mem_add, METH_FASTCALL, "add(offset, delta) -> previous"},
    {NULL}
};

static PyTypeObject MemType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmchannels._shm.Mem",
    .tp_basicsize = sizeof(MemObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Mem_init,
    .tp_dealloc = (destructor)Mem_dealloc,
    .tp_methods = Mem_methods,
    .tp_doc = "Atomic 64-bit words in a shared mapping.",
};

/* ------------------------------------------------------------------ */

static PyObject *
shm_set_fault(PyObject *mod, PyObject *args)
{
    int point;
    long countdown;
    if (!PyArg_ParseTuple(args, "il", &point, &countdown))
        return NULL;
    g_fault_countdown = countdown;
    g_fault_point = point;
    Py_RETURN_NONE;
}

static PyObject *
shm_monotonic_ns(PyObject *mod, PyObject *unused)
{
    return PyLong_FromUnsignedLongLong(now_ns());
}

static PyMethodDef module_methods[] = {
    {"ring_init", shm_ring_init, METH_VARARGS,
     "ring_init(mem, data_size, ring_id, salt, owner_slot, owner_gen, key)"},
    {"wait_enter", shm_wait_enter, METH_O, "register as a futex waiter; returns wake sequence values"},
    {"wait", shm_wait, METH_VARARGS, "wait(rings, seqs, timeout) -> False on timeout"},
    {"wait_leave", shm_wait_leave, METH_O, "unregister as a futex waiter"},
    {"set_fault", shm_set_fault, METH_VARARGS, "set_fault(point, countdown): SIGKILL self there (tests)"},
    {"monotonic_ns", shm_monotonic_ns, METH_NOARGS, "CLOCK_MONOTONIC in ns, as the ring sees it"},
    {NULL}
};

static struct PyModuleDef shm_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "shmchannels._shm",
    .m_doc = "Lock-free shared-memory rings, atomics and futex waits for shmchannels.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__shm(void)
{
    if (PyType_Ready(&WriterType) < 0 || PyType_Ready(&RingType) < 0 || PyType_Ready(&MemType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&shm_module);
    if (!m)
        return NULL;
    Py_INCREF(&WriterType);
    Py_INCREF(&RingType);
    Py_INCREF(&MemType);
    if (PyModule_AddObject(m, "Writer", (PyObject *)&WriterType) < 0 ||
        PyModule_AddObject(m, "Ring", (PyObject *)&RingType) < 0 ||
        PyModule_AddObject(m, "Mem", (PyObject *)&MemType) < 0)
        return NULL;
    struct { const char *name; long value; } consts[] = {
        {"HEADER_SIZE", RING_HEADER_SIZE}, {"RECORD_HEADER", REC_HDR}, {"RECORD_ALIGN", REC_ALIGN},
        {"MAX_SLOTS", MAX_SLOTS}, {"INTENT_SIZE", sizeof(intent_t)},
        {"PUT_OK", PUT_OK}, {"PUT_WAKE", PUT_WAKE}, {"PUT_FULL", PUT_FULL},
        {"PUT_NOSPACE", PUT_NOSPACE}, {"PUT_TOO_BIG", PUT_TOO_BIG}, {"PUT_CLOSED", PUT_CLOSED},
        {"PUT_FORKED", PUT_FORKED}, {"PUT_NOMEM", PUT_NOMEM},
        {"LAZY_POPULATE", lazy_populate_supported()},
        {"FAULT_NONE", FAULT_NONE}, {"FAULT_AFTER_INTENT", FAULT_AFTER_INTENT},
        {"FAULT_AFTER_CLAIM", FAULT_AFTER_CLAIM}, {"FAULT_AFTER_PAD", FAULT_AFTER_PAD},
        {"FAULT_AFTER_HEADER", FAULT_AFTER_HEADER}, {"FAULT_BEFORE_COMMIT", FAULT_BEFORE_COMMIT},
        {"FAULT_CONSUMER_COPIED", FAULT_CONSUMER_COPIED}, {"FAULT_CONSUMER_TAKEN", FAULT_CONSUMER_TAKEN},
        {NULL, 0}};
    for (int i = 0; consts[i].name; i++)
        if (PyModule_AddIntConstant(m, consts[i].name, consts[i].value) < 0)
            return NULL;
    pthread_atfork(NULL, NULL, at_fork_child);
    return m;
}
