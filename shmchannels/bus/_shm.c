/*
 * shmchannels._shm: the CPython binding of the C core.
 *
 * The core itself is plain C without Python.h:
 *
 *  - shm_layout.h: both shared-memory layouts (ring header and records; the
 *    control segment's header, slots and intent record);
 *  - ring.h / ring.c: the multi-producer / multi-consumer byte ring with
 *    variable-length records that survives SIGKILL of any participant, the
 *    intent seqlock (writer and reader), futex waits over several rings and
 *    the fault-injection points used by the crash tests.
 *
 * This file only parses arguments, calls the core and builds Python results:
 * the types Writer, Ring and Mem (atomics on words of a shared mapping), the
 * module functions, and the constants, among them every control-segment
 * offset (CONTROL_*) that shmchannels/control.py uses.  The protocol is
 * described in docs/architecture.md; the typed interface is _shm.pyi.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>

#include "ring.h"
#include "shm_layout.h"

/* ------------------------------------------------------------------ */
/* Writer: this process's identity and intent slot on one bus          */

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    writer_t w;
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
    writer_init(&self->w, (intent_t *)((char *)self->view.buf + off), slot, gen);
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
    return PyBool_FromLong(self->view.obj && writer_valid(&self->w));
}

static PyGetSetDef Writer_getset[] = {
    {"valid", (getter)Writer_get_valid, NULL, "False in a forked child", NULL},
    {NULL}
};

static PyTypeObject WriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmchannels.bus._shm.Writer",
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
    ring_t r;             /* r.h is NULL until initialised */
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
    if (ring_open(&self->r, self->view.buf, (uint64_t)self->view.len) != 0) {
        PyBuffer_Release(&self->view);
        PyErr_SetString(PyExc_ValueError, "not an initialised shmchannels ring (bad magic, version or size)");
        return -1;
    }
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
    do { if (!(self)->r.h) { PyErr_SetString(PyExc_ValueError, "ring not initialised"); return NULL; } } while (0)

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
    int rc = ring_put(&self->r, &self->writer->w, meta, (uint32_t)mlen, PyBytes_AS_STRING(args[0]),
                      (uint64_t)PyBytes_GET_SIZE(args[0]), expiry_ns, capacity, (uint32_t)flags);
    return PyLong_FromLong(rc);
}

/* One attempt at the head.  Returns 1 with *out set, 0 when empty,
 * -1 when the head record is not ready (writer in progress or dead),
 * -2 on a Python error.  The record is copied out before head moves. */
static int
take_one(RingObject *self, uint64_t now, PyObject **out)
{
    ring_take_t t;
    for (;;) {
        int rc = ring_take_begin(&self->r, now, &t);
        if (rc == -2) {
            PyErr_SetString(PyExc_RuntimeError, "corrupt ring record");
            return -2;
        }
        if (rc != 1)
            return rc;
        PyObject *body = PyBytes_FromStringAndSize(t.src + t.meta_len, t.len - t.meta_len);
        if (!body)
            return -2;
        PyObject *meta;
        if (t.meta_len) {
            meta = PyBytes_FromStringAndSize(t.src, t.meta_len);
            if (!meta) {
                Py_DECREF(body);
                return -2;
            }
        } else {
            meta = Py_None;
            Py_INCREF(meta);
        }
        if (!ring_take_commit(&self->r, &t)) {
            Py_DECREF(body);
            Py_DECREF(meta);
            continue;
        }
        PyObject *tup = PyTuple_New(4);
        if (!tup) {
            Py_DECREF(body);
            Py_DECREF(meta);
            return -2;
        }
        PyTuple_SET_ITEM(tup, 0, PyLong_FromUnsignedLong(t.flags));
        PyTuple_SET_ITEM(tup, 1, body);
        PyTuple_SET_ITEM(tup, 2, meta);
        PyTuple_SET_ITEM(tup, 3, PyLong_FromUnsignedLongLong(t.deadline_ns));
        *out = tup;
        return 1;
    }
}

/* get() -> (flags, body, meta|None, deadline_ns) | None (empty) | False (head not ready) */
static PyObject *
Ring_get(RingObject *self, PyObject *unused)
{
    CHECK_RING(self);
    PyObject *out = NULL;
    int rc = take_one(self, now_ns(), &out);
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
        int rc = take_one(self, now, &out);
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

static PyObject *
Ring_has_data(RingObject *self, PyObject *unused)
{
    CHECK_RING(self);
    return PyBool_FromLong(ring_consumable(&self->r));
}

/* head_state() -> (pos, state, pid, slot, gen, len) describing the record at
 * the head, where state is "empty", "ready", "pad", "skip", "writing" or
 * "unwritten" (claimed, but the writer has not written a header yet). */
static PyObject *
Ring_head_state(RingObject *self, PyObject *unused)
{
    CHECK_RING(self);
    static const char *const names[] = {
        [HEAD_EMPTY] = "empty", [HEAD_READY] = "ready", [HEAD_PAD] = "pad",
        [HEAD_SKIP] = "skip", [HEAD_WRITING] = "writing", [HEAD_UNWRITTEN] = "unwritten",
    };
    ring_head_t s;
    ring_head_state(&self->r, &s);
    return Py_BuildValue("(KsIIKI)", (unsigned long long)s.pos, names[s.state], s.pid, s.slot,
                         (unsigned long long)s.gen, s.len);
}

/* recover(pos, total) -> True when nothing in the claim is left unready.
 * See ring_recover. */
static PyObject *
Ring_recover(RingObject *self, PyObject *args)
{
    CHECK_RING(self);
    unsigned long long pos, total;
    if (!PyArg_ParseTuple(args, "KK", &pos, &total))
        return NULL;
    int rc = ring_recover(&self->r, pos, total);
    if (rc < 0) {
        PyErr_SetString(PyExc_ValueError, "recovery span does not fit the claimed region");
        return NULL;
    }
    return PyBool_FromLong(rc);
}

/* discard_all() consumes every consumable record (flush) -> messages dropped. */
static PyObject *
Ring_discard_all(RingObject *self, PyObject *unused)
{
    CHECK_RING(self);
    return PyLong_FromUnsignedLongLong(ring_discard_all(&self->r));
}

static PyObject *
Ring_reset(RingObject *self, PyObject *unused)
{
    CHECK_RING(self);
    ring_reset(&self->r);
    Py_RETURN_NONE;
}

/* purge() consumes expired records (and padding) at the head without a
 * reader, so that a bus nobody reads drains itself and `status` never counts
 * an expired message as pending.  Returns how many moves of head it made. */
static PyObject *
Ring_purge(RingObject *self, PyObject *unused)
{
    CHECK_RING(self);
    return PyLong_FromUnsignedLongLong(ring_purge(&self->r, now_ns()));
}

/* damage() -> None if the header words are consistent, else a sentence. */
static PyObject *
Ring_damage(RingObject *self, PyObject *unused)
{
    CHECK_RING(self);
    char buf[200];
    if (!ring_damage(&self->r, buf, sizeof buf))
        Py_RETURN_NONE;
    return PyUnicode_FromString(buf);
}

static PyObject *
Ring_repair(RingObject *self, PyObject *unused)
{
    CHECK_RING(self);
    ring_repair(&self->r);
    Py_RETURN_NONE;
}

static PyObject *
Ring_close(RingObject *self, PyObject *arg)
{
    CHECK_RING(self);
    unsigned long long closer = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    ring_close(&self->r, closer);
    Py_RETURN_NONE;
}

/* retire(idle_ns, closer_slot) -> True if the ring is closed afterwards. */
static PyObject *
Ring_retire(RingObject *self, PyObject *args)
{
    CHECK_RING(self);
    unsigned long long idle_ns;
    unsigned int closer;
    if (!PyArg_ParseTuple(args, "KI", &idle_ns, &closer))
        return NULL;
    return PyBool_FromLong(ring_retire(&self->r, idle_ns, closer));
}

static PyObject *
Ring_get_closer(RingObject *self, void *closure)
{
    CHECK_RING(self);
    uint64_t c = ring_closer_word(&self->r);
    if (!c)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong(c - 1);
}

static PyObject *
Ring_get_closed(RingObject *self, void *closure)
{
    CHECK_RING(self);
    return PyBool_FromLong(ring_closed(&self->r));
}

static PyObject *
Ring_pending(RingObject *self, void *closure)
{
    CHECK_RING(self);
    return PyLong_FromUnsignedLongLong(ring_pending(&self->r));
}

static PyObject *
Ring_get_fifo_waiters(RingObject *self, void *closure)
{
    CHECK_RING(self);
    return PyLong_FromUnsignedLong(__atomic_load_n(&self->r.h->fifo_waiters, __ATOMIC_RELAXED));
}

static PyObject *
Ring_get_futex_waiters(RingObject *self, void *closure)
{
    CHECK_RING(self);
    return PyLong_FromUnsignedLong(__atomic_load_n(&self->r.h->futex_waiters, __ATOMIC_RELAXED));
}

static PyObject *
Ring_get_ring_id(RingObject *self, void *closure)
{
    CHECK_RING(self);
    return PyLong_FromUnsignedLongLong(self->r.h->ring_id);
}

static PyObject *
Ring_get_owner(RingObject *self, void *closure)
{
    CHECK_RING(self);
    if (self->r.h->owner_slot == 0xffffffffu)
        Py_RETURN_NONE;
    return Py_BuildValue("(IK)", self->r.h->owner_slot, (unsigned long long)self->r.h->owner_gen);
}

static PyObject *
Ring_get_key(RingObject *self, void *closure)
{
    CHECK_RING(self);
    uint32_t n = self->r.h->key_len;
    if (n > sizeof(self->r.h->key))
        n = sizeof(self->r.h->key);
    return PyUnicode_DecodeUTF8(self->r.h->key, n, "replace");
}

static PyObject *
Ring_get_data_size(RingObject *self, void *closure)
{
    CHECK_RING(self);
    return PyLong_FromUnsignedLongLong(self->r.size);
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
    ring_fifo_add(&self->r, slot);
    Py_RETURN_NONE;
}

static PyObject *
Ring_fifo_remove(RingObject *self, PyObject *arg)
{
    CHECK_RING(self);
    unsigned slot;
    if (slot_arg(arg, &slot) < 0)
        return NULL;
    ring_fifo_remove(&self->r, slot);
    Py_RETURN_NONE;
}

static PyObject *
Ring_fifo_slots(RingObject *self, PyObject *unused)
{
    CHECK_RING(self);
    unsigned slots[MAX_SLOTS];
    unsigned n = ring_fifo_slots(&self->r, slots);
    PyObject *list = PyList_New(n);
    if (!list)
        return NULL;
    for (unsigned i = 0; i < n; i++) {
        PyObject *v = PyLong_FromUnsignedLong(slots[i]);
        if (!v) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, v);
    }
    return list;
}

/* notify(): wake threads parked in wait() on this ring. */
static PyObject *
Ring_notify(RingObject *self, PyObject *unused)
{
    CHECK_RING(self);
    ring_notify(&self->r);
    Py_RETURN_NONE;
}

static PyObject *
Ring_stats(RingObject *self, PyObject *unused)
{
    CHECK_RING(self);
    ring_stats_t s;
    ring_stats(&self->r, &s);
    return Py_BuildValue(
        "{sKsKsKsKsKsKsKsKsKsKsIsIsO}",
        "sent", (unsigned long long)s.sent,
        "pending", (unsigned long long)s.pending,
        "bytes_used", (unsigned long long)s.bytes_used,
        "data_size", (unsigned long long)s.data_size,
        "full", (unsigned long long)s.full,
        "expired", (unsigned long long)s.expired,
        "recovered", (unsigned long long)s.recovered,
        "oldest_sent_ns", (unsigned long long)s.oldest_sent_ns,
        "created_ns", (unsigned long long)s.created_ns,
        "last_put_ns", (unsigned long long)s.last_put_ns,
        "fifo_waiters", s.fifo_waiters,
        "futex_waiters", s.futex_waiters,
        "closed", s.closed ? Py_True : Py_False);
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
    .tp_name = "shmchannels.bus._shm.Ring",
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
    if (key_len > (Py_ssize_t)RING_KEY_MAX) {
        PyErr_SetString(PyExc_ValueError, "ring key too long");
        return NULL;
    }
    Py_buffer v;
    if (PyObject_GetBuffer(mem, &v, PyBUF_WRITABLE) < 0)
        return NULL;
    int rc = ring_format(v.buf, (uint64_t)v.len, data_size, ring_id, salt, owner_slot, owner_gen, key,
                         (uint64_t)key_len);
    PyBuffer_Release(&v);
    if (rc != 0) {
        PyErr_SetString(PyExc_ValueError, "mapping too small for the ring");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* wait_enter(rings) -> tuple of wake_seq values; registers as a futex waiter
 * on each ring.  Call wait(rings, seqs, timeout) after re-checking for data,
 * and always wait_leave(rings). */
static int
rings_from_seq(PyObject *seq, ring_t **rings, Py_ssize_t *n)
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
        if (!PyObject_TypeCheck(o, &RingType) || !((RingObject *)o)->r.h) {
            Py_DECREF(fast);
            PyErr_SetString(PyExc_TypeError, "wait needs initialised Ring objects");
            return -1;
        }
        rings[i] = &((RingObject *)o)->r;
    }
    *n = len;
    Py_DECREF(fast);
    return 0;
}

static PyObject *
shm_wait_enter(PyObject *mod, PyObject *arg)
{
    ring_t *rings[MAX_WAIT_RINGS];
    uint64_t vals[MAX_WAIT_RINGS];
    Py_ssize_t n;
    if (rings_from_seq(arg, rings, &n) < 0)
        return NULL;
    PyObject *seqs = PyTuple_New(n);
    if (!seqs)
        return NULL;
    ring_wait_enter(rings, (int)n, vals);
    for (Py_ssize_t i = 0; i < n; i++)
        PyTuple_SET_ITEM(seqs, i, PyLong_FromUnsignedLong((unsigned long)vals[i]));
    return seqs;
}

static PyObject *
shm_wait_leave(PyObject *mod, PyObject *arg)
{
    ring_t *rings[MAX_WAIT_RINGS];
    Py_ssize_t n;
    if (rings_from_seq(arg, rings, &n) < 0)
        return NULL;
    ring_wait_leave(rings, (int)n);
    Py_RETURN_NONE;
}

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
    ring_t *rings[MAX_WAIT_RINGS];
    uint64_t vals[MAX_WAIT_RINGS];
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
    for (Py_ssize_t i = 0; i < n; i++)
        vals[i] = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(sf, i));
    Py_DECREF(sf);
    if (PyErr_Occurred())
        return NULL;
    int woken;
    Py_BEGIN_ALLOW_THREADS
    woken = ring_wait(rings, vals, (int)n, timeout);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(woken);
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

/* The 8-byte aligned span [off, off + size) of the mapping, or NULL. */
static void *
mem_span(MemObject *self, PyObject *off_obj, Py_ssize_t size, const char *what)
{
    if (!self->view.obj) {
        PyErr_SetString(PyExc_ValueError, "Mem not initialised");
        return NULL;
    }
    Py_ssize_t off = PyLong_AsSsize_t(off_obj);
    if (off == -1 && PyErr_Occurred())
        return NULL;
    if (off < 0 || off % 8 || off + size > self->view.len) {
        PyErr_Format(PyExc_IndexError, "%s offset out of range or unaligned", what);
        return NULL;
    }
    return (char *)self->view.buf + off;
}

static inline uint64_t *
mem_word(MemObject *self, PyObject *off_obj)
{
    return (uint64_t *)mem_span(self, off_obj, 8, "word");
}

static PyObject *
Mem_load(MemObject *self, PyObject *arg)
{
    uint64_t *p = mem_word(self, arg);
    if (!p)
        return NULL;
    return PyLong_FromUnsignedLongLong(word_load(p));
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
    word_store(p, v);
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
    return PyBool_FromLong(word_cas(p, expected, nw));
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
    return PyLong_FromUnsignedLongLong(word_add(p, (uint64_t)d));
}

/* read_intent(offset) -> (ring_id, pos, total) of the claim in flight in the
 * intent record at offset (a slot's CONTROL_S_INTENT), or None. */
static PyObject *
Mem_read_intent(MemObject *self, PyObject *arg)
{
    const intent_t *in = mem_span(self, arg, (Py_ssize_t)sizeof(intent_t), "intent");
    if (!in)
        return NULL;
    uint64_t ring_id, pos, total;
    if (!intent_read(in, &ring_id, &pos, &total))
        Py_RETURN_NONE;
    return Py_BuildValue("(KKK)", (unsigned long long)ring_id, (unsigned long long)pos,
                         (unsigned long long)total);
}

static PyMethodDef Mem_methods[] = {
    {"load", (PyCFunction)Mem_load, METH_O, "load(offset) -> u64 (acquire)"},
    {"store", (PyCFunction)(void (*)(void))Mem_store, METH_FASTCALL, "store(offset, value) (seq_cst)"},
    {"cas", (PyCFunction)(void (*)(void))Mem_cas, METH_FASTCALL, "cas(offset, expected, new) -> bool"},
    {"add", (PyCFunction)(void (*)(void))Mem_add, METH_FASTCALL, "add(offset, delta) -> previous"},
    {"read_intent", (PyCFunction)Mem_read_intent, METH_O,
     "read_intent(offset) -> (ring_id, pos, total) | None: the seqlocked claim in flight"},
    {NULL}
};

static PyTypeObject MemType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmchannels.bus._shm.Mem",
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
py_set_fault(PyObject *mod, PyObject *args)
{
    int point;
    long countdown;
    if (!PyArg_ParseTuple(args, "il", &point, &countdown))
        return NULL;
    shm_set_fault(point, countdown);
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
    {"set_fault", py_set_fault, METH_VARARGS, "set_fault(point, countdown): SIGKILL self there (tests)"},
    {"monotonic_ns", shm_monotonic_ns, METH_NOARGS, "CLOCK_MONOTONIC in ns, as the ring sees it"},
    {NULL}
};

static struct PyModuleDef shm_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "shmchannels.bus._shm",
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
    int lazy_populate = shm_core_init();
    struct { const char *name; long value; } consts[] = {
        {"HEADER_SIZE", RING_HEADER_SIZE}, {"RECORD_HEADER", REC_HDR}, {"RECORD_ALIGN", REC_ALIGN},
        {"MAX_SLOTS", MAX_SLOTS}, {"INTENT_SIZE", sizeof(intent_t)},
        {"PUT_OK", PUT_OK}, {"PUT_WAKE", PUT_WAKE}, {"PUT_FULL", PUT_FULL},
        {"PUT_NOSPACE", PUT_NOSPACE}, {"PUT_TOO_BIG", PUT_TOO_BIG}, {"PUT_CLOSED", PUT_CLOSED},
        {"PUT_FORKED", PUT_FORKED}, {"PUT_NOMEM", PUT_NOMEM},
        {"LAZY_POPULATE", lazy_populate},
        {"FAULT_NONE", FAULT_NONE}, {"FAULT_AFTER_INTENT", FAULT_AFTER_INTENT},
        {"FAULT_AFTER_CLAIM", FAULT_AFTER_CLAIM}, {"FAULT_AFTER_PAD", FAULT_AFTER_PAD},
        {"FAULT_AFTER_HEADER", FAULT_AFTER_HEADER}, {"FAULT_BEFORE_COMMIT", FAULT_BEFORE_COMMIT},
        {"FAULT_CONSUMER_COPIED", FAULT_CONSUMER_COPIED}, {"FAULT_CONSUMER_TAKEN", FAULT_CONSUMER_TAKEN},
        /* the control segment (shm_layout.h), for shmchannels/control.py */
        {"CONTROL_VERSION", CONTROL_VERSION},
        {"CONTROL_HEADER_SIZE", CONTROL_HEADER_SIZE},
        {"CONTROL_SLOT_SIZE", CONTROL_SLOT_SIZE},
        {"CONTROL_GROUP_BUCKETS", CONTROL_GROUP_BUCKETS},
        {"CONTROL_LABEL_SIZE", CONTROL_LABEL_SIZE},
        {"CONTROL_H_MAGIC", offsetof(ctrl_hdr_t, magic)},
        {"CONTROL_H_VERSION", offsetof(ctrl_hdr_t, version)},
        {"CONTROL_H_CREATED", offsetof(ctrl_hdr_t, created_ns)},
        {"CONTROL_H_BOOT", offsetof(ctrl_hdr_t, boot)},
        {"CONTROL_H_FLUSH_EPOCH", offsetof(ctrl_hdr_t, flush_epoch)},
        {"CONTROL_H_MASTER", offsetof(ctrl_hdr_t, master)},
        {"CONTROL_H_RING_SIZE", offsetof(ctrl_hdr_t, ring_size)},
        {"CONTROL_H_REGISTRY_EPOCH", offsetof(ctrl_hdr_t, registry_epoch)},
        {"CONTROL_H_RECLAIMS", offsetof(ctrl_hdr_t, reclaims)},
        {"CONTROL_S_STATE", offsetof(ctrl_slot_t, state)},
        {"CONTROL_S_GEN", offsetof(ctrl_slot_t, gen)},
        {"CONTROL_S_PID", offsetof(ctrl_slot_t, pid)},
        {"CONTROL_S_KIND", offsetof(ctrl_slot_t, kind)},
        {"CONTROL_S_STARTED", offsetof(ctrl_slot_t, started_ns)},
        {"CONTROL_S_HEARTBEAT", offsetof(ctrl_slot_t, heartbeat_ns)},
        {"CONTROL_S_INTENT", offsetof(ctrl_slot_t, intent)},
        {"CONTROL_S_LABEL", offsetof(ctrl_slot_t, label)},
        {NULL, 0}};
    for (int i = 0; consts[i].name; i++)
        if (PyModule_AddIntConstant(m, consts[i].name, consts[i].value) < 0)
            return NULL;
    /* 64 bits: not a C long constant on every platform */
    PyObject *magic = PyLong_FromUnsignedLongLong(CONTROL_MAGIC);
    if (!magic || PyModule_AddObject(m, "CONTROL_MAGIC", magic) < 0) {
        Py_XDECREF(magic);
        return NULL;
    }
    return m;
}
