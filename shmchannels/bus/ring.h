/*
 * ring.h: the ring algorithm of shmchannels in plain C (no Python.h).
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
 * turned into a SKIP record by whoever finds it (ring_recover), using the
 * header or, if the writer died before writing it, the writer's intent.
 *
 * The layouts live in shm_layout.h; the CPython binding in _shm.c only
 * parses arguments, calls these functions and builds the results.  The
 * protocol is described in docs/architecture.md.
 */
#ifndef SHMCHANNELS_RING_H
#define SHMCHANNELS_RING_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "shm_layout.h"

#define MAX_WAIT_RINGS 64

/* ring_put() results */
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

/* This process's identity and intent record on one bus. */
typedef struct {
    intent_t *intent;
    uint32_t pid;
    uint32_t slot;
    uint64_t gen;
    uint64_t fork_gen; /* g_fork_gen when the identity was taken */
} writer_t;

/* One mapped ring. */
typedef struct {
    ring_hdr_t *h; /* NULL until ring_open succeeds */
    char *data;
    uint64_t size;
    uint64_t mask;
} ring_t;

/* A READY record found at the head by ring_take_begin; the caller copies
 * [src, src + len) out and then calls ring_take_commit. */
typedef struct {
    uint64_t hp, hs, total, deadline_ns;
    const char *src; /* payload: meta[meta_len] + body */
    uint32_t len, meta_len, flags;
} ring_take_t;

/* The record at the head, as ring_head_state describes it. */
enum { HEAD_EMPTY, HEAD_READY, HEAD_PAD, HEAD_SKIP, HEAD_WRITING, HEAD_UNWRITTEN };
typedef struct {
    uint64_t pos, gen;
    int state;
    uint32_t pid, slot, len;
} ring_head_t;

typedef struct {
    uint64_t sent, pending, bytes_used, data_size, full, expired, recovered;
    uint64_t oldest_sent_ns, created_ns, last_put_ns;
    uint32_t fifo_waiters, futex_waiters;
    int closed;
} ring_stats_t;

/* ------------------------------------------------------------------ */
/* process-wide state                                                  */

extern volatile uint64_t g_fork_gen; /* bumped in every forked child */

/* Once per process: fork handler; returns whether MADV_POPULATE_WRITE works. */
int shm_core_init(void);
int ring_lazy_populate_supported(void);
void shm_set_fault(int point, long countdown);

static inline uint64_t
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static inline uint64_t
load64(const uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

/* ------------------------------------------------------------------ */
/* words of a shared mapping (the control segment)                     */

static inline uint64_t word_load(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void word_store(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
static inline int
word_cas(uint64_t *p, uint64_t expected, uint64_t nw)
{
    return __atomic_compare_exchange_n(p, &expected, nw, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}
static inline uint64_t word_add(uint64_t *p, uint64_t d) { return __atomic_fetch_add(p, d, __ATOMIC_SEQ_CST); }

/* Read an intent as a seqlock.  1 with the claim when one is in flight; 0
 * when none is, or when the writer stayed mid-update for every try (it is
 * alive then, so its claim is not to be recovered). */
int intent_read(const intent_t *in, uint64_t *ring_id, uint64_t *pos, uint64_t *total);

/* ------------------------------------------------------------------ */
/* writer and ring                                                     */

void writer_init(writer_t *w, intent_t *intent, uint32_t slot, uint64_t gen);
static inline int writer_valid(const writer_t *w) { return w->fork_gen == g_fork_gen; }

/* Format a ring in [buf, buf + len).  0, or -1 bad size, -2 key too long,
 * -3 mapping too small or misaligned. */
int ring_format(void *buf, uint64_t len, uint64_t data_size, uint64_t ring_id, uint64_t salt,
                long owner_slot, uint64_t owner_gen, const char *key, uint64_t key_len);
/* Validate a formatted ring; 0, or -1 when it is not one. */
int ring_open(ring_t *r, void *buf, uint64_t len);

int ring_put(ring_t *r, writer_t *w, const char *meta, uint32_t mlen, const char *body, uint64_t blen,
             uint64_t expiry_ns, uint64_t capacity, uint32_t uflags);

/* One attempt at the head: 1 with *t describing a live READY record, 0 when
 * empty, -1 when the head record is not ready (writer in progress or dead),
 * -2 when the record is corrupt.  Padding, skips and expired records on the
 * way are consumed. */
int ring_take_begin(ring_t *r, uint64_t now, ring_take_t *t);
/* After copying t's payload: 1 if the record is now ours (head moved past
 * it), 0 if another consumer took it first (drop the copy, begin again). */
int ring_take_commit(ring_t *r, const ring_take_t *t);

int ring_consumable(const ring_t *r);
void ring_head_state(const ring_t *r, ring_head_t *out);
/* 1: nothing in the claim is left unready, 0: not resolved, -1: the span
 * does not fit the claimed region. */
int ring_recover(ring_t *r, uint64_t pos, uint64_t total);
uint64_t ring_discard_all(ring_t *r);
void ring_reset(ring_t *r);
uint64_t ring_purge(ring_t *r, uint64_t now);
/* 0 if the header is consistent, else 1 with a sentence in buf. */
int ring_damage(const ring_t *r, char *buf, size_t bufsize);
void ring_repair(ring_t *r);
void ring_close(ring_t *r, uint64_t closer);
int ring_retire(ring_t *r, uint64_t idle_ns, uint32_t closer);
void ring_notify(ring_t *r);
void ring_fifo_add(ring_t *r, unsigned slot);
void ring_fifo_remove(ring_t *r, unsigned slot);
/* Slots parked on this ring, ascending, into out[MAX_SLOTS]; returns the count. */
unsigned ring_fifo_slots(const ring_t *r, unsigned *out);
void ring_stats(const ring_t *r, ring_stats_t *out);

static inline int ring_closed(const ring_t *r) { return (load64(&r->h->tail_pos) & CLOSED_BIT) != 0; }
static inline uint64_t ring_closer_word(const ring_t *r) { return __atomic_load_n(&r->h->closer, __ATOMIC_ACQUIRE); }
static inline uint64_t
ring_pending(const ring_t *r)
{
    uint64_t hs = load64(&r->h->head_seq), ts = load64(&r->h->tail_seq);
    return ts > hs ? ts - hs : 0;
}

/* ------------------------------------------------------------------ */
/* futex waits over several rings                                      */

/* Register as a futex waiter on each ring; seqs[i] gets its wake_seq. */
void ring_wait_enter(ring_t *const *rings, int n, uint64_t *seqs);
void ring_wait_leave(ring_t *const *rings, int n);
/* Wait until a ring's wake_seq moves from seqs[i] or timeout seconds pass;
 * 0 on timeout, 1 otherwise (woken, EINTR, or the value had already moved).
 * Blocks: the binding calls it without the GIL. */
int ring_wait(ring_t *const *rings, const uint64_t *seqs, int n, double timeout);

#endif /* SHMCHANNELS_RING_H */
