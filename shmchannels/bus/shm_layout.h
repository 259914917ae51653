/*
 * shm_layout.h: the two shared-memory layouts of a bus, defined once.
 *
 *  - a ring segment (`shmch-...@r<id>`): a 4 KiB header (ring_hdr_t) and a
 *    power-of-two data area of 16-byte aligned records (rec_t + payload);
 *  - the control segment (`shmch-...@ctl`): a 4 KiB header (ctrl_hdr_t), one
 *    128-byte slot per process (ctrl_slot_t, whose intent_t the ring's
 *    producers write) and CONTROL_GROUP_BUCKETS u64 group version counters.
 *
 * Python never spells an offset of its own: the binding (_shm.c) exports
 * every control-segment offset below as a CONTROL_* constant and
 * shmchannels/control.py takes them from there.  Plain C, no Python.h.
 * Changing any offset or size here changes the on-disk format: bump
 * RING_VERSION or CONTROL_VERSION with it.
 */
#ifndef SHMCHANNELS_SHM_LAYOUT_H
#define SHMCHANNELS_SHM_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#if !defined(__x86_64__) && !defined(__aarch64__)
#error "shmchannels needs a 64-bit x86 or ARM CPU"
#endif

/* ------------------------------------------------------------------ */
/* Ring segment                                                        */

#define RING_MAGIC 0x31474e49524d4853ULL /* "SHMRING1" */
#define RING_VERSION 1u
#define RING_HEADER_SIZE 4096u
#define REC_HDR 64u
#define REC_ALIGN 16u
#define CLOSED_BIT (1ULL << 63) /* in tail_pos: the ring refuses puts */
#define MAX_SLOTS 1024u
#define RING_KEY_MAX 124u

/* record states, the low 2 bits of a seal */
enum { ST_SKIP = 0, ST_WRITING = 1, ST_READY = 2, ST_PAD = 3 };

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
    char key[RING_KEY_MAX]; /* 68 */
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

_Static_assert(offsetof(ring_hdr_t, key) == 68, "key offset");
_Static_assert(offsetof(ring_hdr_t, populated) == 192, "populated offset");
_Static_assert(offsetof(ring_hdr_t, tail_pos) == 256, "tail offset");
_Static_assert(offsetof(ring_hdr_t, tail_seq) == 264, "tail pair: seq follows pos (16-byte CAS)");
_Static_assert(offsetof(ring_hdr_t, head_pos) == 320, "head offset");
_Static_assert(offsetof(ring_hdr_t, head_seq) == 328, "head pair: seq follows pos (16-byte CAS)");
_Static_assert(offsetof(ring_hdr_t, wake_seq) == 384, "wake offset");
_Static_assert(offsetof(ring_hdr_t, fifo_bits) == 400, "fifo bits offset");
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
_Static_assert(offsetof(rec_t, len) == 8, "{seal, len, flags} swap by one 16-byte CAS");

/* ------------------------------------------------------------------ */
/* Control segment                                                     */

#define CONTROL_MAGIC 0x314c5254434d4853ULL /* "SHMCTRL1" */
#define CONTROL_VERSION 2u /* 2: registry epoch word; registry files named g<epoch> */
#define CONTROL_HEADER_SIZE 4096u
#define CONTROL_SLOT_SIZE 128u
#define CONTROL_GROUP_BUCKETS 4096u
#define CONTROL_LABEL_SIZE 32u

/* The bus header: 64-bit words at the start of a CONTROL_HEADER_SIZE page. */
typedef struct {
    uint64_t magic;          /* 0: CONTROL_MAGIC, written last at creation */
    uint64_t version;        /* 8: low 32 bits: version, high 32 bits: number of slots */
    uint64_t created_ns;     /* 16: time.time_ns() at creation */
    uint64_t boot;           /* 24: random id of this incarnation of the bus */
    uint64_t flush_epoch;    /* 32: bumped by flush(); processes drop local buffers when it moves */
    uint64_t master;         /* 40: slot + 1 of the serve master, 0 if none */
    uint64_t ring_size;      /* 48: default ring data size chosen by the bus creator */
    uint64_t registry_epoch; /* 56: which registry database is current; bumped by a rebuild */
    uint64_t reclaims;       /* 64: bumped by every reclaim of a dead slot */
} ctrl_hdr_t;

/* The per-process claim record that lives in the caller's slot of the
 * control segment.  It is a seqlock: iseq is odd while being written; the
 * producer writes it in ring_put, intent_read() reads it. */
typedef struct {
    uint64_t iseq;
    uint64_t ring_id;
    uint64_t pos;
    uint64_t total; /* 0: no claim in flight */
} intent_t;

/* One process slot; slot i starts at CONTROL_HEADER_SIZE + i * CONTROL_SLOT_SIZE. */
typedef struct {
    uint64_t state;        /* 0: 0 free, 1 active */
    uint64_t gen;          /* 8: bumped each time the slot is claimed */
    uint64_t pid;          /* 16 */
    uint64_t kind;         /* 24 */
    uint64_t started_ns;   /* 32: time.time_ns() */
    uint64_t heartbeat_ns; /* 40: CLOCK_MONOTONIC ns, written by the process's supervision tick */
    uint64_t _reserved[2]; /* 48 */
    intent_t intent;       /* 64: owned by the C ring */
    char label[CONTROL_LABEL_SIZE]; /* 96: UTF-8, NUL-padded: a human name for `status` */
} ctrl_slot_t;

/* Group version buckets (u64 each) follow the last slot. */
#define CONTROL_SEGMENT_SIZE(nslots) \
    ((uint64_t)CONTROL_HEADER_SIZE + (uint64_t)(nslots) * CONTROL_SLOT_SIZE + CONTROL_GROUP_BUCKETS * 8u)

_Static_assert(offsetof(ctrl_hdr_t, magic) == 0, "H_MAGIC");
_Static_assert(offsetof(ctrl_hdr_t, version) == 8, "H_VERSION");
_Static_assert(offsetof(ctrl_hdr_t, created_ns) == 16, "H_CREATED");
_Static_assert(offsetof(ctrl_hdr_t, boot) == 24, "H_BOOT");
_Static_assert(offsetof(ctrl_hdr_t, flush_epoch) == 32, "H_FLUSH_EPOCH");
_Static_assert(offsetof(ctrl_hdr_t, master) == 40, "H_MASTER");
_Static_assert(offsetof(ctrl_hdr_t, ring_size) == 48, "H_RING_SIZE");
_Static_assert(offsetof(ctrl_hdr_t, registry_epoch) == 56, "H_REGISTRY_EPOCH");
_Static_assert(offsetof(ctrl_hdr_t, reclaims) == 64, "H_RECLAIMS");
_Static_assert(sizeof(ctrl_hdr_t) <= CONTROL_HEADER_SIZE, "control header size");
_Static_assert(sizeof(intent_t) == 32, "intent size");
_Static_assert(offsetof(ctrl_slot_t, state) == 0, "S_STATE");
_Static_assert(offsetof(ctrl_slot_t, gen) == 8, "S_GEN");
_Static_assert(offsetof(ctrl_slot_t, pid) == 16, "S_PID");
_Static_assert(offsetof(ctrl_slot_t, kind) == 24, "S_KIND");
_Static_assert(offsetof(ctrl_slot_t, started_ns) == 32, "S_STARTED");
_Static_assert(offsetof(ctrl_slot_t, heartbeat_ns) == 40, "S_HEARTBEAT");
_Static_assert(offsetof(ctrl_slot_t, intent) == 64, "S_INTENT");
_Static_assert(offsetof(ctrl_slot_t, intent) % 8 == 0, "intent words are 8-byte aligned");
_Static_assert(offsetof(ctrl_slot_t, label) == 96, "S_LABEL");
_Static_assert(sizeof(ctrl_slot_t) == CONTROL_SLOT_SIZE, "slot size");
_Static_assert(CONTROL_HEADER_SIZE % 64 == 0 && CONTROL_SLOT_SIZE % 64 == 0, "slots on cache lines");

#endif /* SHMCHANNELS_SHM_LAYOUT_H */
