/*
 * ring.c: the ring algorithm (see ring.h for the protocol in short and
 * docs/architecture.md for the long version).  Plain C, no Python.h: the
 * CPython binding is _shm.c.
 */
#include "ring.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

/* ------------------------------------------------------------------ */
/* process-wide state                                                  */

static volatile int g_fault_point = FAULT_NONE;
static volatile long g_fault_countdown = 0;
volatile uint64_t g_fork_gen = 0;

static void
fault(int point)
{
    if (g_fault_point == point && --g_fault_countdown <= 0) {
        kill(getpid(), SIGKILL);
        for (;;) pause();
    }
}
#define FAULT(p) do { if (__builtin_expect(g_fault_point == (p), 0)) fault(p); } while (0)

void
shm_set_fault(int point, long countdown)
{
    g_fault_countdown = countdown;
    g_fault_point = point;
}

static void
at_fork_child(void)
{
    g_fork_gen++;
}

static inline uint64_t
align_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) & ~(a - 1);
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

/* Wake futex waiters if there are any.  The fence orders the caller's
 * stores before the counter read (Dekker with ring_wait_enter). */
static inline void
wake_waiters(ring_hdr_t *h)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(&h->futex_waiters, __ATOMIC_RELAXED)) {
        __atomic_fetch_add(&h->wake_seq, 1, __ATOMIC_SEQ_CST);
        futex_wake_all(&h->wake_seq);
    }
}

/* Wake every futex waiter unconditionally (close, retire, repair). */
static inline void
wake_all(ring_hdr_t *h)
{
    __atomic_fetch_add(&h->wake_seq, 1, __ATOMIC_SEQ_CST);
    futex_wake_all(&h->wake_seq);
}

/* ------------------------------------------------------------------ */
/* intent seqlock reader (its writer is ring_put)                      */

static inline void
cpu_relax(void)
{
#if defined(__x86_64__)
    __builtin_ia32_pause();
#else
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

/* 100 tries, each retry after a pause: a writer between its two iseq stores
 * is running a handful of instructions unless it was preempted there. */
int
intent_read(const intent_t *in, uint64_t *ring_id, uint64_t *pos, uint64_t *total)
{
    for (int i = 0; i < 100; i++) {
        if (i)
            cpu_relax();
        uint64_t seq = load64(&in->iseq);
        if (seq & 1)
            continue;
        uint64_t id = load64(&in->ring_id), p = load64(&in->pos), t = load64(&in->total);
        if (load64(&in->iseq) == seq) {
            if (!t)
                return 0;
            *ring_id = id;
            *pos = p;
            *total = t;
            return 1;
        }
    }
    return 0; /* writer is mid-update right now; it is alive */
}

/* ------------------------------------------------------------------ */
/* writer and ring                                                     */

void
writer_init(writer_t *w, intent_t *intent, uint32_t slot, uint64_t gen)
{
    w->intent = intent;
    w->pid = (uint32_t)getpid();
    w->slot = slot;
    w->gen = gen;
    w->fork_gen = g_fork_gen;
}

int
ring_format(void *buf, uint64_t len, uint64_t data_size, uint64_t ring_id, uint64_t salt,
            long owner_slot, uint64_t owner_gen, const char *key, uint64_t key_len)
{
    if (data_size < 4096 || (data_size & (data_size - 1)) || data_size > (1ULL << 32))
        return -1;
    if (key_len > RING_KEY_MAX)
        return -2;
    if (len < RING_HEADER_SIZE + data_size || (uintptr_t)buf % 64)
        return -3;
    ring_hdr_t *h = (ring_hdr_t *)buf;
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
    return 0;
}

int
ring_open(ring_t *r, void *buf, uint64_t len)
{
    ring_hdr_t *h = (ring_hdr_t *)buf;
    if ((uintptr_t)h % 64 || len < RING_HEADER_SIZE ||
        load64(&h->magic) != RING_MAGIC || h->version != RING_VERSION ||
        h->header_size != RING_HEADER_SIZE || h->data_size == 0 ||
        (h->data_size & (h->data_size - 1)) ||
        len < RING_HEADER_SIZE + h->data_size)
        return -1;
    r->h = h;
    r->data = (char *)h + RING_HEADER_SIZE;
    r->size = h->data_size;
    r->mask = h->data_size - 1;
    return 0;
}

/* Consume expired records (and padding) at the head.  Stops at the first
 * record that is live, not ready, or at the tail.  Returns nonzero if head
 * moved, i.e. if bytes or message slots were freed. */
uint64_t
ring_purge(ring_t *r, uint64_t now)
{
    ring_hdr_t *h = r->h;
    uint64_t progress = 0;
    for (;;) {
        uint64_t hp = load64(&h->head_pos), hs = load64(&h->head_seq);
        uint64_t tp = load64(&h->tail_pos) & ~CLOSED_BIT;
        if (hp >= tp)
            break;
        rec_t *rec = (rec_t *)(r->data + (hp & r->mask));
        uint64_t seal = load64(&rec->seal);
        if (seal == seal_of(h, hp, ST_PAD) || seal == seal_of(h, hp, ST_SKIP)) {
            uint32_t skip = rec->len;
            int counted = seal == seal_of(h, hp, ST_SKIP);
            __atomic_thread_fence(__ATOMIC_ACQUIRE);
            if (load64(&rec->seal) != seal)
                continue;
            progress += cas128(&h->head_pos, hp, hs, hp + skip, hs + counted);
            continue;
        }
        if (seal != seal_of(h, hp, ST_READY))
            break;
        uint64_t deadline = rec->deadline_ns;
        uint32_t len = rec->len;
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (load64(&rec->seal) != seal || deadline > now)
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

int
ring_lazy_populate_supported(void)
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

int
shm_core_init(void)
{
    pthread_atfork(NULL, NULL, at_fork_child);
    return ring_lazy_populate_supported();
}

/* Make data bytes [0, end) writable without a fault.  0 on success. */
static int
ring_populate(ring_t *r, uint64_t end)
{
    ring_hdr_t *h = r->h;
    uint64_t have = __atomic_load_n(&h->populated, __ATOMIC_ACQUIRE);
    if (end <= have)
        return 0;
    long page = sysconf(_SC_PAGESIZE);
    uint64_t from = have & ~(uint64_t)(page - 1);
    uint64_t to = align_up(end, POPULATE_CHUNK);
    if (to > r->size)
        to = r->size;
    if (g_lazy_populate && madvise(r->data + from, to - from, MADV_POPULATE_WRITE) != 0)
        return -1;
    while (have < to && !__atomic_compare_exchange_n(&h->populated, &have, to, 0, __ATOMIC_RELEASE,
                                                      __ATOMIC_ACQUIRE))
        ;
    return 0;
}

int
ring_put(ring_t *r, writer_t *w, const char *meta, uint32_t mlen, const char *body, uint64_t blen,
         uint64_t expiry_ns, uint64_t capacity, uint32_t uflags)
{
    ring_hdr_t *h = r->h;
    if (w->fork_gen != g_fork_gen)
        return PUT_FORKED;
    uint64_t payload = (uint64_t)mlen + blen;
    uint64_t need = align_up(REC_HDR + payload, REC_ALIGN);
    if (payload > UINT32_MAX || need > r->size / 2)
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
        uint64_t to_end = r->size - (tp & r->mask);
        pad = to_end < need ? to_end : 0;
        int full = capacity && ts - hs >= capacity;
        int nospace = tp + pad + need - hp > r->size;
        if (full || nospace) {
            /* Tail and head were read one after the other: meanwhile other
             * writers and a consumer may have moved head past this tail
             * snapshot, which reads as a huge backlog.  Refuse only on a
             * snapshot that held still across the head read. */
            if (load64(&h->tail_pos) != tp || load64(&h->head_pos) != hp)
                continue;
            if (!purged) {
                purged = 1;
                if (ring_purge(r, now))
                    continue;
            }
            __atomic_fetch_add(&h->full_total, 1, __ATOMIC_RELAXED);
            __atomic_store_n(&w->intent->total, 0, __ATOMIC_RELEASE); /* no claim in flight */
            return full ? PUT_FULL : PUT_NOSPACE;
        }
        /* On the first lap the claim ends at tp + pad + need; later laps
         * only reuse bytes that were populated on the first. */
        uint64_t populated = __atomic_load_n(&h->populated, __ATOMIC_ACQUIRE);
        if (populated < r->size && tp + pad + need > populated && ring_populate(r, tp + pad + need) != 0) {
            __atomic_fetch_add(&h->full_total, 1, __ATOMIC_RELAXED);
            __atomic_store_n(&w->intent->total, 0, __ATOMIC_RELEASE);
            return PUT_NOMEM;
        }
        /* The intent seqlock (reader: intent_read). */
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
        rec_t *pr = (rec_t *)(r->data + (p & r->mask));
        pr->len = (uint32_t)pad;
        __atomic_store_n(&pr->seal, seal_of(h, p, ST_PAD), __ATOMIC_RELEASE);
        p += pad;
        FAULT(FAULT_AFTER_PAD);
    }
    rec_t *rec = (rec_t *)(r->data + (p & r->mask));
    rec->len = (uint32_t)payload;
    rec->flags = uflags;
    rec->pid = w->pid;
    rec->slot = w->slot;
    rec->gen = w->gen;
    rec->deadline_ns = now + expiry_ns;
    rec->sent_ns = now;
    __atomic_store_n(&h->last_put_ns, now, __ATOMIC_RELAXED);
    rec->meta_len = mlen;
    __atomic_store_n(&rec->seal, seal_of(h, p, ST_WRITING), __ATOMIC_RELEASE);
    FAULT(FAULT_AFTER_HEADER);
    char *dst = (char *)rec + REC_HDR;
    if (mlen)
        memcpy(dst, meta, mlen);
    if (blen)
        memcpy(dst + mlen, body, blen);
    FAULT(FAULT_BEFORE_COMMIT);
    uint64_t writing = seal_of(h, p, ST_WRITING);
    /* A recoverer only rewrites records of dead writers, so this CAS cannot
     * fail while we live; it is a CAS so that the rule is enforced, not hoped. */
    __atomic_compare_exchange_n(&rec->seal, &writing, seal_of(h, p, ST_READY), 0,
                                __ATOMIC_RELEASE, __ATOMIC_RELAXED);
    /* The claim is resolved: an intent is only meaningful while in flight. */
    __atomic_store_n(&w->intent->total, 0, __ATOMIC_RELEASE);
    /* Dekker with the waiters: our seal store must be visible before we read
     * their counters, and their counter increments before they re-check. */
    wake_waiters(h);
    return __atomic_load_n(&h->fifo_waiters, __ATOMIC_RELAXED) ? PUT_WAKE : PUT_OK;
}

int
ring_take_begin(ring_t *r, uint64_t now, ring_take_t *t)
{
    ring_hdr_t *h = r->h;
    for (;;) {
        uint64_t hp = load64(&h->head_pos), hs = load64(&h->head_seq);
        uint64_t tp = load64(&h->tail_pos) & ~CLOSED_BIT;
        if (hp >= tp)
            return 0;
        rec_t *rec = (rec_t *)(r->data + (hp & r->mask));
        uint64_t seal = load64(&rec->seal);
        if (seal == seal_of(h, hp, ST_PAD) || seal == seal_of(h, hp, ST_SKIP)) {
            uint32_t skip = rec->len;
            __atomic_thread_fence(__ATOMIC_ACQUIRE);
            if (load64(&rec->seal) != seal)
                continue;
            cas128(&h->head_pos, hp, hs, hp + skip, hs + (seal == seal_of(h, hp, ST_SKIP)));
            continue;
        }
        if (seal != seal_of(h, hp, ST_READY))
            return -1;
        uint32_t len = rec->len, mlen = rec->meta_len, flags = rec->flags;
        uint64_t deadline = rec->deadline_ns;
        uint64_t total = align_up(REC_HDR + len, REC_ALIGN);
        if (mlen > len || (hp & r->mask) + total > r->size) {
            /* Either another consumer took the record and a producer reused
             * the bytes after we read the seal (head has moved: retry), or
             * the mapping is corrupt: refuse rather than read out of bounds. */
            if (load64(&h->head_pos) != hp)
                continue;
            return -2;
        }
        if (deadline <= now) {
            if (cas128(&h->head_pos, hp, hs, hp + total, hs + 1))
                __atomic_fetch_add(&h->expired_total, 1, __ATOMIC_RELAXED);
            continue;
        }
        t->hp = hp;
        t->hs = hs;
        t->total = total;
        t->deadline_ns = deadline;
        t->src = (const char *)rec + REC_HDR;
        t->len = len;
        t->meta_len = mlen;
        t->flags = flags;
        return 1;
    }
}

int
ring_take_commit(ring_t *r, const ring_take_t *t)
{
    FAULT(FAULT_CONSUMER_COPIED);
    /* The copy is only ours if head has not moved: nobody may reuse the
     * bytes before head passes them, and head positions never repeat. */
    if (!cas128(&r->h->head_pos, t->hp, t->hs, t->hp + t->total, t->hs + 1))
        return 0;
    FAULT(FAULT_CONSUMER_TAKEN);
    return 1;
}

/* True when the head record can be consumed right now (READY, PAD or SKIP). */
int
ring_consumable(const ring_t *r)
{
    const ring_hdr_t *h = r->h;
    uint64_t hp = load64(&h->head_pos);
    uint64_t tp = load64(&h->tail_pos) & ~CLOSED_BIT;
    if (hp >= tp)
        return 0;
    uint64_t seal = load64(&((rec_t *)(r->data + (hp & r->mask)))->seal);
    return seal == seal_of(h, hp, ST_READY) || seal == seal_of(h, hp, ST_PAD) ||
           seal == seal_of(h, hp, ST_SKIP);
}

void
ring_head_state(const ring_t *r, ring_head_t *out)
{
    const ring_hdr_t *h = r->h;
    uint64_t hp = load64(&h->head_pos);
    uint64_t tp = load64(&h->tail_pos) & ~CLOSED_BIT;
    out->pos = hp;
    if (hp >= tp) {
        out->state = HEAD_EMPTY;
        out->pid = out->slot = out->len = 0;
        out->gen = 0;
        return;
    }
    const rec_t *rec = (const rec_t *)(r->data + (hp & r->mask));
    uint64_t seal = load64(&rec->seal);
    int state = HEAD_UNWRITTEN;
    if (seal == seal_of(h, hp, ST_READY)) state = HEAD_READY;
    else if (seal == seal_of(h, hp, ST_PAD)) state = HEAD_PAD;
    else if (seal == seal_of(h, hp, ST_SKIP)) state = HEAD_SKIP;
    else if (seal == seal_of(h, hp, ST_WRITING)) state = HEAD_WRITING;
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    out->state = state;
    out->pid = rec->pid;
    out->slot = rec->slot;
    out->gen = rec->gen;
    out->len = rec->len;
}

/* Make the claim [pos, pos+total) of a dead writer skippable.  The caller
 * has established that the writer is dead (its slot lock is free).
 * total == 0 means "the record at pos has a WRITING header; take its length
 * from there"; otherwise it is the dead writer's intent.
 *
 * The walk starts at max(pos, head): bytes before head were consumed and may
 * already hold someone else's records.  Each step swaps {seal, len} with one
 * 16-byte CAS against the exact bytes it read, so a recoverer that was
 * preempted while the record was skipped, consumed and the bytes reused can
 * only fail, never scribble. */
int
ring_recover(ring_t *r, uint64_t pos, uint64_t total)
{
    ring_hdr_t *h = r->h;
    for (int guard = 0; guard < 8; guard++) {
        uint64_t hp = load64(&h->head_pos);
        uint64_t tp = load64(&h->tail_pos) & ~CLOSED_BIT;
        uint64_t p = pos > hp ? pos : hp;
        uint64_t end = total ? pos + total : 0;
        if (total && p >= end)
            return 1; /* already consumed */
        if (p >= tp)
            return 1;
        rec_t *rec = (rec_t *)(r->data + (p & r->mask));
        uint64_t seal = load64(&rec->seal);
        uint64_t lenflags = __atomic_load_n((uint64_t *)&rec->len, __ATOMIC_ACQUIRE);
        if (seal == seal_of(h, p, ST_PAD)) {
            if (!total || p + (uint32_t)lenflags >= end)
                return 1;
            pos = p + (uint32_t)lenflags; /* the record follows the padding */
            total = end - pos;
            continue;
        }
        if (seal == seal_of(h, p, ST_READY) || seal == seal_of(h, p, ST_SKIP))
            return 1;
        uint64_t skip;
        if (seal == seal_of(h, p, ST_WRITING))
            skip = align_up(REC_HDR + (uint32_t)lenflags, REC_ALIGN);
        else if (total)
            skip = end - p; /* from pos, or from where head entered the claim */
        else
            return 0; /* nothing tells us the length */
        if (skip % REC_ALIGN || skip == 0 || p + skip > tp)
            return -1;
        uint64_t new_lenflags = (lenflags & 0xffffffff00000000ULL) | (uint32_t)skip;
        if (cas128(&rec->seal, seal, lenflags, seal_of(h, p, ST_SKIP), new_lenflags)) {
            __atomic_fetch_add(&h->recovered_total, 1, __ATOMIC_RELAXED);
            wake_waiters(h);
            return 1;
        }
        /* lost a race: look again */
    }
    return 0;
}

/* Consume every consumable record (flush).  Returns the number of messages
 * dropped; stops early at a record that is not ready. */
uint64_t
ring_discard_all(ring_t *r)
{
    ring_hdr_t *h = r->h;
    uint64_t n = 0;
    for (;;) {
        uint64_t hp = load64(&h->head_pos), hs = load64(&h->head_seq);
        uint64_t tp = load64(&h->tail_pos) & ~CLOSED_BIT;
        if (hp >= tp)
            break;
        rec_t *rec = (rec_t *)(r->data + (hp & r->mask));
        uint64_t seal = load64(&rec->seal);
        uint64_t step;
        int counted;
        if (seal == seal_of(h, hp, ST_PAD) || seal == seal_of(h, hp, ST_SKIP)) {
            step = rec->len;
            counted = seal == seal_of(h, hp, ST_SKIP);
        } else if (seal == seal_of(h, hp, ST_READY)) {
            step = align_up(REC_HDR + rec->len, REC_ALIGN);
            counted = 1;
        } else {
            break;
        }
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (load64(&rec->seal) != seal)
            continue;
        if (cas128(&h->head_pos, hp, hs, hp + step, hs + counted) && seal == seal_of(h, hp, ST_READY))
            n++;
    }
    return n;
}

/* Drop everything up to the current tail, committed or not.  Only for the
 * case recovery cannot resolve (two writers died in the same claim window);
 * at-most-once delivery permits the loss. */
void
ring_reset(ring_t *r)
{
    ring_hdr_t *h = r->h;
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
}

/* Check the header words that every put and get trusts.  A consistent
 * header keeps head <= tail, at most one lap of bytes between them, and no
 * more claims than 16-byte records fit in those bytes. */
int
ring_damage(const ring_t *r, char *buf, size_t bufsize)
{
    ring_hdr_t *h = r->h;
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
    if (hp % REC_ALIGN || tp % REC_ALIGN)
        snprintf(buf, bufsize, "misaligned head %llu or tail %llu", (unsigned long long)hp, (unsigned long long)tp);
    else if (hp > tp)
        snprintf(buf, bufsize, "head %llu is past tail %llu", (unsigned long long)hp, (unsigned long long)tp);
    else if (tp - hp > r->size)
        snprintf(buf, bufsize, "%llu bytes between head and tail in a %llu byte ring",
                 (unsigned long long)(tp - hp), (unsigned long long)r->size);
    else if (hs > ts)
        snprintf(buf, bufsize, "head claim %llu is past tail claim %llu", (unsigned long long)hs, (unsigned long long)ts);
    else if (ts - hs > (tp - hp) / REC_ALIGN)
        snprintf(buf, bufsize, "%llu claims pending in %llu bytes", (unsigned long long)(ts - hs),
                 (unsigned long long)(tp - hp));
    else
        return 0;
    return 1;
}

/* Make a damaged ring usable again: head and tail both move to one aligned
 * position past either, with the larger claim count, so every pending
 * record (whatever its state) is dropped and no word is trusted that
 * ring_damage rejected.  A producer racing with it fails its CAS and retries. */
void
ring_repair(ring_t *r)
{
    ring_hdr_t *h = r->h;
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
    wake_all(h);
}

void
ring_close(ring_t *r, uint64_t closer)
{
    ring_hdr_t *h = r->h;
    __atomic_store_n(&h->closer, closer + 1, __ATOMIC_RELEASE);
    __atomic_fetch_or(&h->tail_pos, CLOSED_BIT, __ATOMIC_SEQ_CST);
    wake_all(h);
}

/* Close the ring if it is empty and nothing was put for idle_ns.  The CAS
 * on tail makes "empty" and "closed" one step, so no put can slip in
 * between.  Returns 1 if the ring is closed afterwards. */
int
ring_retire(ring_t *r, uint64_t idle_ns, uint32_t closer)
{
    ring_hdr_t *h = r->h;
    uint64_t tp = load64(&h->tail_pos), ts = load64(&h->tail_seq);
    if (tp & CLOSED_BIT)
        return 1;
    uint64_t last = __atomic_load_n(&h->last_put_ns, __ATOMIC_RELAXED);
    if (!last)
        last = h->created_ns;
    if (load64(&h->head_pos) != tp || now_ns() - last < idle_ns)
        return 0;
    __atomic_store_n(&h->closer, (uint64_t)closer + 1, __ATOMIC_RELEASE);
    if (!cas128(&h->tail_pos, tp, ts, tp | CLOSED_BIT, ts))
        return 0;
    wake_all(h);
    return 1;
}

/* Wake threads parked in ring_wait on this ring.  Used after an in-process
 * drain moved records into local buffers. */
void
ring_notify(ring_t *r)
{
    wake_waiters(r->h);
}

void
ring_fifo_add(ring_t *r, unsigned slot)
{
    uint64_t bit = 1ULL << (slot % 64);
    uint64_t old = __atomic_fetch_or(&r->h->fifo_bits[slot / 64], bit, __ATOMIC_SEQ_CST);
    if (!(old & bit))
        __atomic_fetch_add(&r->h->fifo_waiters, 1, __ATOMIC_SEQ_CST);
}

void
ring_fifo_remove(ring_t *r, unsigned slot)
{
    uint64_t bit = 1ULL << (slot % 64);
    uint64_t old = __atomic_fetch_and(&r->h->fifo_bits[slot / 64], ~bit, __ATOMIC_SEQ_CST);
    if (old & bit)
        __atomic_fetch_sub(&r->h->fifo_waiters, 1, __ATOMIC_SEQ_CST);
}

unsigned
ring_fifo_slots(const ring_t *r, unsigned *out)
{
    unsigned n = 0;
    for (unsigned w = 0; w < MAX_SLOTS / 64; w++) {
        uint64_t bits = __atomic_load_n(&r->h->fifo_bits[w], __ATOMIC_ACQUIRE);
        while (bits) {
            unsigned b = (unsigned)__builtin_ctzll(bits);
            bits &= bits - 1;
            out[n++] = w * 64 + b;
        }
    }
    return n;
}

void
ring_stats(const ring_t *r, ring_stats_t *out)
{
    ring_hdr_t *h = r->h;
    uint64_t hp = load64(&h->head_pos), hs = load64(&h->head_seq);
    uint64_t tp = load64(&h->tail_pos), ts = load64(&h->tail_seq);
    uint64_t oldest = 0;
    /* Age of the oldest message: the first READY record from the head. */
    uint64_t p = hp, end = tp & ~CLOSED_BIT;
    for (int i = 0; i < 64 && p < end; i++) {
        rec_t *rec = (rec_t *)(r->data + (p & r->mask));
        uint64_t seal = load64(&rec->seal);
        if (seal == seal_of(h, p, ST_READY)) {
            oldest = rec->sent_ns;
            break;
        }
        if (seal == seal_of(h, p, ST_PAD) || seal == seal_of(h, p, ST_SKIP)) {
            p += rec->len;
            continue;
        }
        break;
    }
    out->sent = ts;
    out->pending = ts > hs ? ts - hs : 0;
    out->bytes_used = (tp & ~CLOSED_BIT) - hp;
    out->data_size = r->size;
    out->full = __atomic_load_n(&h->full_total, __ATOMIC_RELAXED);
    out->expired = __atomic_load_n(&h->expired_total, __ATOMIC_RELAXED);
    out->recovered = __atomic_load_n(&h->recovered_total, __ATOMIC_RELAXED);
    out->oldest_sent_ns = oldest;
    out->created_ns = h->created_ns;
    out->last_put_ns = __atomic_load_n(&h->last_put_ns, __ATOMIC_RELAXED);
    out->fifo_waiters = __atomic_load_n(&h->fifo_waiters, __ATOMIC_RELAXED);
    out->futex_waiters = __atomic_load_n(&h->futex_waiters, __ATOMIC_RELAXED);
    out->closed = (tp & CLOSED_BIT) != 0;
}

/* ------------------------------------------------------------------ */
/* futex waits                                                         */

void
ring_wait_enter(ring_t *const *rings, int n, uint64_t *seqs)
{
    for (int i = 0; i < n; i++)
        __atomic_fetch_add(&rings[i]->h->futex_waiters, 1, __ATOMIC_SEQ_CST);
    for (int i = 0; i < n; i++)
        seqs[i] = __atomic_load_n(&rings[i]->h->wake_seq, __ATOMIC_SEQ_CST);
}

void
ring_wait_leave(ring_t *const *rings, int n)
{
    for (int i = 0; i < n; i++)
        __atomic_fetch_sub(&rings[i]->h->futex_waiters, 1, __ATOMIC_SEQ_CST);
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

/* EINTR returns 1 so that the caller runs its signal handlers and re-checks. */
int
ring_wait(ring_t *const *rings, const uint64_t *seqs, int n, double timeout)
{
    struct futex_waitv_arg w[MAX_WAIT_RINGS];
    for (int i = 0; i < n; i++) {
        w[i].val = seqs[i];
        w[i].uaddr = (uint64_t)(uintptr_t)&rings[i]->h->wake_seq;
        w[i].flags = FUTEX2_SIZE_U32_;
        w[i].__reserved = 0;
    }
    if (timeout < 0)
        timeout = 0;
    long rc;
    int err = 0;
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
    return !(rc < 0 && err == ETIMEDOUT);
}
