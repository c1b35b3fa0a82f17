/*
 * Fast path of streams.otlp.decode for the hottest input: ExportTraceServiceRequest protobuf.
 *
 * decode_spans(payload, columns, none, fallback) reads the protobuf wire format directly and
 * appends one value per span to each of the 34 lists in `columns` (the order of
 * otlp_decode.TRACE_COLUMNS). It produces exactly what the pure-Python decoder produces (a test
 * compares both on every field and on mutated payloads); values that are rare and intricate to
 * format (doubles, bytes, arrays, kvlists) are handed to `fallback(raw)` in Python.
 *
 * Two passes. The first (validate) accepts only what the protobuf library (upb) accepts, and
 * all of it but field number 0 inside an unknown group (refused by upb from version 37). It
 * checks every field of every message in opentelemetry-proto's trace, common and resource
 * descriptors (SCHEMA below), the fields the second pass never reads included, as upb checks
 * them: tags of at most 5 bytes and 32 bits, lengths of at most 5 bytes and 31 bits, varints of
 * at most 10 bytes, proto3 strings valid UTF-8, nested messages well-formed, unknown groups
 * closed, messages and groups nested at most 100 deep counted from the request. The second pass
 * builds the rows with protobuf's merge semantics: the last occurrence of a scalar wins, the
 * occurrences of a singular message merge (their bytes are read one after the other).
 *
 * Errors raise ValueError(reason, detail) with the reasons the Python decoder uses
 * ("undecodable", "invalid_id", "invalid_value", "too_deep"); the caller takes back the rows of a
 * message that failed half-way and lets the protobuf library decide, so a refusal here can never
 * disagree with it. Returns (spans appended, resource_spans seen).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define NCOLS 34
enum {
    C_TS, C_TRACE_ID, C_SPAN_ID, C_PARENT, C_STATE, C_NAME, C_KIND, C_SERVICE, C_RES_ATTRS,
    C_SCOPE_NAME, C_SCOPE_VERSION, C_SPAN_ATTRS, C_DURATION, C_STATUS_CODE, C_STATUS_MESSAGE,
    C_EV_TS, C_EV_NAME, C_EV_ATTRS, C_LN_TRACE, C_LN_SPAN, C_LN_STATE, C_LN_ATTRS,
    C_RES_SCHEMA, C_RES_DROPPED, C_SCOPE_ATTRS, C_SCOPE_DROPPED, C_SCOPE_SCHEMA, C_FLAGS,
    C_DROPPED_ATTRS, C_DROPPED_EVENTS, C_DROPPED_LINKS, C_EV_DROPPED, C_LN_FLAGS, C_LN_DROPPED
};

static const char *SPAN_KINDS[] = {"Unspecified", "Internal", "Server", "Client", "Producer", "Consumer"};
static const char *STATUS_CODES[] = {"Unset", "Ok", "Error"};
static PyObject *kind_strs[6], *status_strs[3], *str_true, *str_false, *str_empty;
static PyObject *key_service_name, *key_executable;

typedef struct { const uint8_t *p, *end; } Buf;

static int fail(const char *reason, const char *detail) {
    PyObject *args = Py_BuildValue("(ss)", reason, detail);
    if (args) { PyErr_SetObject(PyExc_ValueError, args); Py_DECREF(args); }
    return -1;
}

/* A varint of at most 10 bytes; bits past 64 are dropped, as protobuf drops them. */
static int read_varint(Buf *b, uint64_t *out) {
    uint64_t v = 0; int shift = 0;
    while (b->p < b->end && shift < 64) {
        uint8_t c = *b->p++;
        v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) { *out = v; return 0; }
        shift += 7;
    }
    return fail("undecodable", "truncated or overlong varint");
}

/* A tag or a length as upb reads them: at most 5 bytes, and at most `max`. */
static Py_NO_INLINE int read_varint32(Buf *b, uint64_t max, uint64_t *out) {
    uint64_t v = 0;
    for (int i = 0; i < 5 && b->p < b->end; i++) {
        uint8_t c = *b->p++;
        v |= (uint64_t)(c & 0x7f) << (7 * i);
        if (!(c & 0x80)) {
            if (v > max) return fail("undecodable", "tag past 32 bits or length past 31 bits");
            *out = v;
            return 0;
        }
    }
    return fail("undecodable", "truncated or overlong tag or length");
}

/* Next field: tag and, for LEN fields, the sub-buffer; for fixed/varint, the value. */
typedef struct { uint32_t field; int wire; uint64_t num; Buf sub; } Field;

/* protobuf's own limits: tags fit 32 bits (so field numbers are below 2^29), lengths 31 bits,
 * and messages and groups nest at most 100 deep. */
#define MAX_DEPTH 100
#define MAX_GROUP_DEPTH MAX_DEPTH

/* One tag and its value, without looking into groups: 0 a field, 1 an end-group tag,
 * 2 a start-group tag (the caller skips the group), -1 an error. */
static inline int read_tag(Buf *b, Field *f) {
    uint64_t key;
    if (b->p < b->end && *b->p < 0x80) key = *b->p++;
    else if (read_varint32(b, UINT32_MAX, &key) < 0) return -1;
    f->field = (uint32_t)(key >> 3); f->wire = (int)(key & 7);
    if (f->field == 0) return fail("undecodable", "field number 0");
    switch (f->wire) {
    case 0: return read_varint(b, &f->num);
    case 1:
        if (b->end - b->p < 8) return fail("undecodable", "truncated fixed64");
        memcpy(&f->num, b->p, 8); b->p += 8; return 0;
    case 5: {
        uint32_t v;
        if (b->end - b->p < 4) return fail("undecodable", "truncated fixed32");
        memcpy(&v, b->p, 4); b->p += 4; f->num = v; return 0;
    }
    case 2: {
        uint64_t len;
        if (b->p < b->end && *b->p < 0x80) len = *b->p++;
        else if (read_varint32(b, INT32_MAX, &len) < 0) return -1;
        if (len > (uint64_t)(b->end - b->p)) return fail("undecodable", "truncated length-delimited field");
        f->sub.p = b->p; f->sub.end = b->p + len; b->p += len; return 0;
    }
    case 3: return 2;
    case 4: return 1; /* end group: the caller decides (only valid inside a group) */
    default: return fail("undecodable", "invalid wire type");
    }
}

/* Skip a group (deprecated, read as unknown data) up to its end tag. Iterative, with an explicit
 * stack of open groups bounded by MAX_GROUP_DEPTH: nesting costs no C stack, so no input can
 * overflow it. */
static int skip_group(Buf *b, uint32_t field) {
    uint32_t open[MAX_GROUP_DEPTH];
    int depth = 0;
    open[depth++] = field;
    while (depth > 0) {
        Field g;
        if (b->p >= b->end) return fail("undecodable", "unterminated group");
        int r = read_tag(b, &g);
        if (r < 0) return -1;
        if (r == 2) {
            if (depth == MAX_GROUP_DEPTH) return fail("too_deep", "groups nested more than 100 deep");
            open[depth++] = g.field;
        } else if (r == 1) {
            if (g.field != open[depth - 1]) return fail("undecodable", "mismatched end group");
            depth--;
        }
    }
    return 0;
}

/* The next field; a group is skipped whole (0), an end-group tag is 1 for the caller. */
static int read_field(Buf *b, Field *f) {
    int r = read_tag(b, f);
    if (r == 2) return skip_group(b, f->field);
    return r;
}

/* The next field of a message; an end-group tag here is malformed input. */
static int next_field(Buf *b, Field *f) {
    int r = read_field(b, f);
    if (r == 1) return fail("undecodable", "unexpected end group");
    return r;
}

static PyObject *utf8(Buf s) {
    if (s.p == s.end) { Py_INCREF(str_empty); return str_empty; }
    PyObject *o = PyUnicode_DecodeUTF8((const char *)s.p, s.end - s.p, "strict");
    if (!o) { PyErr_Clear(); fail("undecodable", "string field is not valid UTF-8"); }
    return o;
}

/* ---------------------------------------------------------------- pass 1: validate
 *
 * The messages of an ExportTraceServiceRequest, field by field, as opentelemetry-proto's
 * descriptors declare them (trace/v1/trace.proto, common/v1/common.proto,
 * resource/v1/resource.proto, collector/trace/v1/trace_service.proto). A test compares this
 * table with the installed descriptors, so a field added upstream cannot go unchecked here. */
enum {
    M_REQUEST, M_RESOURCE_SPANS, M_RESOURCE, M_ENTITY_REF, M_SCOPE_SPANS, M_SCOPE, M_SPAN, M_EVENT,
    M_LINK, M_STATUS, M_KEY_VALUE, M_ANY_VALUE, M_ARRAY_VALUE, M_KEY_VALUE_LIST, M_COUNT
};
/* How a field is checked: strings as UTF-8, messages field by field; every other kind (and every
 * field sent with a wire type other than its own) is read as protobuf reads unknown fields. */
enum { K_NONE, K_VARINT, K_FIXED64, K_FIXED32, K_BYTES, K_STRING, K_MESSAGE };
static const char *const KIND_NAMES[] = {"", "varint", "fixed64", "fixed32", "bytes", "string", "message"};
#define MAX_SCHEMA_FIELD 16
typedef struct { uint8_t kind, sub; } FieldSpec;
typedef struct { const char *name; FieldSpec fields[MAX_SCHEMA_FIELD + 1]; } MessageSpec;

#define V {K_VARINT, 0}
#define F64 {K_FIXED64, 0}
#define F32 {K_FIXED32, 0}
#define BY {K_BYTES, 0}
#define S {K_STRING, 0}
#define M(t) {K_MESSAGE, t}
static const MessageSpec SCHEMA[M_COUNT] = {
    [M_REQUEST] = {"opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest",
                   {[1] = M(M_RESOURCE_SPANS)}},
    [M_RESOURCE_SPANS] = {"opentelemetry.proto.trace.v1.ResourceSpans",
                          {[1] = M(M_RESOURCE), [2] = M(M_SCOPE_SPANS), [3] = S}},
    [M_RESOURCE] = {"opentelemetry.proto.resource.v1.Resource",
                    {[1] = M(M_KEY_VALUE), [2] = V, [3] = M(M_ENTITY_REF)}},
    [M_ENTITY_REF] = {"opentelemetry.proto.common.v1.EntityRef", {[1] = S, [2] = S, [3] = S, [4] = S}},
    [M_SCOPE_SPANS] = {"opentelemetry.proto.trace.v1.ScopeSpans",
                       {[1] = M(M_SCOPE), [2] = M(M_SPAN), [3] = S}},
    [M_SCOPE] = {"opentelemetry.proto.common.v1.InstrumentationScope",
                 {[1] = S, [2] = S, [3] = M(M_KEY_VALUE), [4] = V}},
    [M_SPAN] = {"opentelemetry.proto.trace.v1.Span",
                {[1] = BY, [2] = BY, [3] = S, [4] = BY, [5] = S, [6] = V, [7] = F64, [8] = F64,
                 [9] = M(M_KEY_VALUE), [10] = V, [11] = M(M_EVENT), [12] = V, [13] = M(M_LINK), [14] = V,
                 [15] = M(M_STATUS), [16] = F32}},
    [M_EVENT] = {"opentelemetry.proto.trace.v1.Span.Event",
                 {[1] = F64, [2] = S, [3] = M(M_KEY_VALUE), [4] = V}},
    [M_LINK] = {"opentelemetry.proto.trace.v1.Span.Link",
                {[1] = BY, [2] = BY, [3] = S, [4] = M(M_KEY_VALUE), [5] = V, [6] = F32}},
    [M_STATUS] = {"opentelemetry.proto.trace.v1.Status", {[2] = S, [3] = V}},
    [M_KEY_VALUE] = {"opentelemetry.proto.common.v1.KeyValue", {[1] = S, [2] = M(M_ANY_VALUE), [3] = V}},
    [M_ANY_VALUE] = {"opentelemetry.proto.common.v1.AnyValue",
                     {[1] = S, [2] = V, [3] = V, [4] = F64, [5] = M(M_ARRAY_VALUE), [6] = M(M_KEY_VALUE_LIST),
                      [7] = BY, [8] = V}},
    [M_ARRAY_VALUE] = {"opentelemetry.proto.common.v1.ArrayValue", {[1] = M(M_ANY_VALUE)}},
    [M_KEY_VALUE_LIST] = {"opentelemetry.proto.common.v1.KeyValueList", {[1] = M(M_KEY_VALUE)}},
};
#undef V
#undef F64
#undef F32
#undef BY
#undef S
#undef M

/* Well-formed UTF-8 as Unicode defines it (no overlong forms, no surrogates, nothing past
 * U+10FFFF): what upb and Python's strict decoder accept. ASCII is checked 8 bytes at a time. */
static inline int utf8_valid(const uint8_t *p, const uint8_t *end) {
    while (p < end) {
        while (end - p >= 8) {
            uint64_t w;
            memcpy(&w, p, 8);
            if (w & 0x8080808080808080ULL) break;
            p += 8;
        }
        while (p < end && *p < 0x80) p++;
        if (p == end) return 1;
        uint8_t c = p[0];
        Py_ssize_t left = end - p;
        if (c >= 0xC2 && c <= 0xDF) {
            if (left < 2 || (p[1] & 0xC0) != 0x80) return 0;
            p += 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            if (left < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) return 0;
            if (c == 0xE0 && p[1] < 0xA0) return 0; /* overlong */
            if (c == 0xED && p[1] > 0x9F) return 0; /* surrogates */
            p += 3;
        } else if (c >= 0xF0 && c <= 0xF4) {
            if (left < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80) return 0;
            if (c == 0xF0 && p[1] < 0x90) return 0; /* overlong */
            if (c == 0xF4 && p[1] > 0x8F) return 0; /* past U+10FFFF */
            p += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

/* Skip an unknown group whose start tag was just read, as upb does: every tag inside read, up
 * to the end tag of the same field number, inside the enclosing message. `room` is how many
 * levels of nesting are left (the group itself takes one). Iterative. */
static int skip_unknown_group(Buf *b, uint32_t field, int room) {
    uint32_t open[MAX_DEPTH];
    int depth = 0;
    if (room < 1) return fail("too_deep", "messages and groups nested more than 100 deep");
    open[depth++] = field;
    while (depth > 0) {
        Field g;
        if (b->p >= b->end) return fail("undecodable", "unterminated group");
        /* read_tag refuses field number 0, which upb before 37 accepts inside unknown groups
           (later versions refuse it): the protobuf library then decides. */
        int r = read_tag(b, &g);
        if (r < 0) return -1;
        if (r == 2) {
            if (depth >= room) return fail("too_deep", "messages and groups nested more than 100 deep");
            open[depth++] = g.field;
        } else if (r == 1) {
            if (g.field != open[depth - 1]) return fail("undecodable", "mismatched end group");
            depth--;
        }
    }
    return 0;
}

/* The whole request, as upb would parse it, without building anything: 0 if upb accepts it.
 * Iterative: one frame per open message, at most MAX_DEPTH + 1 of them. One-byte tags and
 * lengths (nearly all of them) are read inline; longer ones by read_varint32. */
static int validate(Buf b) {
    struct { const uint8_t *end; int type; } stack[MAX_DEPTH + 1];
    int top = 0;
    const uint8_t *p = b.p, *end = b.end;
    const FieldSpec *fields = SCHEMA[M_REQUEST].fields;
    stack[0].end = end;
    stack[0].type = M_REQUEST;
    for (;;) {
        if (p == end) {
            if (top == 0) return 0;
            top--;
            end = stack[top].end;
            fields = SCHEMA[stack[top].type].fields;
            continue;
        }
        uint64_t key;
        if (*p < 0x80) key = *p++;
        else {
            Buf m = {p, end};
            if (read_varint32(&m, UINT32_MAX, &key) < 0) return -1;
            p = m.p;
        }
        uint32_t field = (uint32_t)(key >> 3);
        if (field == 0) return fail("undecodable", "field number 0");
        switch (key & 7) {
        case 0: {
            const uint8_t *limit = end - p > 10 ? p + 10 : end;
            while (p < limit && (*p & 0x80)) p++;
            if (p == limit) return fail("undecodable", "truncated or overlong varint");
            p++;
            break;
        }
        case 1:
            if (end - p < 8) return fail("undecodable", "truncated fixed64");
            p += 8;
            break;
        case 5:
            if (end - p < 4) return fail("undecodable", "truncated fixed32");
            p += 4;
            break;
        case 2: {
            uint64_t len;
            if (p < end && *p < 0x80) len = *p++;
            else {
                Buf m = {p, end};
                if (read_varint32(&m, INT32_MAX, &len) < 0) return -1;
                p = m.p;
            }
            if (len > (uint64_t)(end - p)) return fail("undecodable", "truncated length-delimited field");
            const uint8_t *sub = p;
            p += len;
            if (field > MAX_SCHEMA_FIELD) break;
            FieldSpec spec = fields[field];
            if (spec.kind == K_STRING) {
                if (!utf8_valid(sub, p)) return fail("undecodable", "string field is not valid UTF-8");
            } else if (spec.kind == K_MESSAGE) {
                if (top == MAX_DEPTH) return fail("too_deep", "messages nested more than 100 deep");
                top++;
                stack[top].end = end = p;
                stack[top].type = spec.sub;
                fields = SCHEMA[spec.sub].fields;
                p = sub;
            }
            break;
        }
        case 3: {
            /* a group, known field number or not: no field here is a group, so it is unknown */
            Buf m = {p, end};
            if (skip_unknown_group(&m, field, MAX_DEPTH - top) < 0) return -1;
            p = m.p;
            break;
        }
        case 4: return fail("undecodable", "end group outside a group");
        default: return fail("undecodable", "invalid wire type");
        }
    }
}

/* The table above, for the test that compares it with the descriptors:
 * {message name: {field number: (kind, message name or None)}}. */
static PyObject *schema(PyObject *self, PyObject *unused) {
    PyObject *out = PyDict_New();
    if (!out) return NULL;
    for (int t = 0; t < M_COUNT; t++) {
        PyObject *fields = PyDict_New();
        if (!fields || PyDict_SetItemString(out, SCHEMA[t].name, fields) < 0) { Py_XDECREF(fields); goto error; }
        Py_DECREF(fields);
        for (int n = 1; n <= MAX_SCHEMA_FIELD; n++) {
            FieldSpec spec = SCHEMA[t].fields[n];
            if (spec.kind == K_NONE) continue;
            PyObject *key = PyLong_FromLong(n);
            PyObject *value = spec.kind == K_MESSAGE
                ? Py_BuildValue("(ss)", KIND_NAMES[spec.kind], SCHEMA[spec.sub].name)
                : Py_BuildValue("(sO)", KIND_NAMES[spec.kind], Py_None);
            int rc = (key && value) ? PyDict_SetItem(fields, key, value) : -1;
            Py_XDECREF(key); Py_XDECREF(value);
            if (rc < 0) goto error;
        }
    }
    return out;
error:
    Py_DECREF(out);
    return NULL;
}

/* ---------------------------------------------------------------- pass 2: rows */

static const char HEX[] = "0123456789abcdef";

static PyObject *hex_id(Buf s, Py_ssize_t size, const char *what) {
    Py_ssize_t n = s.end - s.p;
    if (n == 0) { Py_INCREF(str_empty); return str_empty; }
    if (n != size) {
        char msg[96];
        snprintf(msg, sizeof msg, "%s must be %zd bytes, got %zd", what, size, n);
        fail("invalid_id", msg);
        return NULL;
    }
    PyObject *o = PyUnicode_New(n * 2, 127);
    if (!o) return NULL;
    Py_UCS1 *d = PyUnicode_1BYTE_DATA(o);
    for (Py_ssize_t i = 0; i < n; i++) { d[2 * i] = HEX[s.p[i] >> 4]; d[2 * i + 1] = HEX[s.p[i] & 15]; }
    return o;
}

/* AnyValue → str, as otlp_decode.any_value_str. */
static PyObject *any_value(Buf b, PyObject *fallback) {
    Field f; int kind = 0; Buf sval = {NULL, NULL}, raw = b; uint64_t num = 0;
    while (b.p < b.end) {
        if (next_field(&b, &f) < 0) return NULL;
        if (f.field >= 1 && f.field <= 8) {
            static const int wires[] = {0, 2, 0, 0, 1, 2, 2, 2, 0};
            if (f.wire != wires[f.field]) continue;
            kind = (int)f.field;
            if (f.wire == 2) sval = f.sub; else num = f.num;
        }
    }
    switch (kind) {
    case 0: case 8: Py_INCREF(str_empty); return str_empty;
    case 1: return utf8(sval);
    case 2: { PyObject *o = num ? str_true : str_false; Py_INCREF(o); return o; }
    case 3: return PyUnicode_FromFormat("%lld", (long long)(int64_t)num);
    default: break;
    }
    /* double, arrays, kvlists, bytes: the Python formatter, from the AnyValue's own bytes */
    PyObject *bytes = PyBytes_FromStringAndSize((const char *)raw.p, raw.end - raw.p);
    if (!bytes) return NULL;
    PyObject *o = PyObject_CallFunctionObjArgs(fallback, bytes, NULL);
    Py_DECREF(bytes);
    return o;
}

/* repeated KeyValue appended into dict `out` (later keys win, as in the Python decoder). A value
 * sent more than once merges, as protobuf merges a singular message: the AnyValue read is the
 * occurrences' bytes one after the other (a oneof member set later wins, and two occurrences of
 * the same array or kvlist member merge, exactly as protobuf parses them). */
static int key_value(Buf b, PyObject *out, PyObject *fallback) {
    Field f; Buf key = {NULL, NULL}, value = {NULL, NULL}, all = b; int nvalues = 0;
    size_t total = 0;
    while (b.p < b.end) {
        if (next_field(&b, &f) < 0) return -1;
        if (f.field == 1) { if (f.wire != 2) continue; key = f.sub; }
        else if (f.field == 2) {
            if (f.wire != 2) continue;
            value = f.sub; nvalues++; total += (size_t)(f.sub.end - f.sub.p);
        }
    }
    PyObject *k = key.p ? utf8(key) : (Py_INCREF(str_empty), str_empty);
    if (!k) return -1;
    PyObject *v;
    if (nvalues == 0) { v = str_empty; Py_INCREF(v); }
    else if (nvalues == 1) v = any_value(value, fallback);
    else {
        uint8_t *joined = PyMem_Malloc(total ? total : 1), *w = joined;
        if (!joined) { Py_DECREF(k); PyErr_NoMemory(); return -1; }
        while (all.p < all.end) {
            if (next_field(&all, &f) < 0) { PyMem_Free(joined); Py_DECREF(k); return -1; }
            if (f.field == 2 && f.wire == 2) { memcpy(w, f.sub.p, f.sub.end - f.sub.p); w += f.sub.end - f.sub.p; }
        }
        v = any_value((Buf){joined, joined + total}, fallback);
        PyMem_Free(joined);
    }
    if (!v) { Py_DECREF(k); return -1; }
    int rc = PyDict_SetItem(out, k, v);
    Py_DECREF(k); Py_DECREF(v);
    return rc;
}

static int append_steal(PyObject *list, PyObject *item) {
    if (!item) return -1;
    int rc = PyList_Append(list, item);
    Py_DECREF(item);
    return rc;
}

static int check_ts(uint64_t v, const char *what) {
    if (v > (uint64_t)INT64_MAX) {
        char msg[128];
        snprintf(msg, sizeof msg, "%s %llu ns is past 2262-04-11, the last DateTime64(9) instant", what,
                 (unsigned long long)v);
        return fail("invalid_value", msg);
    }
    return 0;
}

typedef struct {
    PyObject **cols;
    PyObject *none, *fallback;
    /* per resource */
    PyObject *res_attrs, *service, *res_schema, *res_dropped;
    /* per scope */
    PyObject *scope_name, *scope_version, *scope_attrs, *scope_dropped, *scope_schema;
} Ctx;

/* Events or links of one span: parallel lists, or the shared empty tuple. */
static int span_events(Ctx *c, Buf *evs, Py_ssize_t n) {
    PyObject **cols = c->cols;
    if (n == 0) {
        for (int i = 0; i < 4; i++) {
            int col = (int[]){C_EV_TS, C_EV_NAME, C_EV_ATTRS, C_EV_DROPPED}[i];
            if (PyList_Append(cols[col], c->none) < 0) return -1;
        }
        return 0;
    }
    PyObject *ts = PyList_New(n), *names = PyList_New(n), *attrs = PyList_New(n), *dropped = PyList_New(n);
    int rc = -1;
    if (!ts || !names || !attrs || !dropped) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        Buf b = evs[i]; Field f; uint64_t t = 0, d = 0; Buf name = {NULL, NULL};
        PyObject *a = PyDict_New();
        if (!a) goto done;
        PyList_SET_ITEM(attrs, i, a);
        while (b.p < b.end) {
            if (next_field(&b, &f) < 0) goto done;
            switch (f.field) {
            case 1: if (f.wire != 1) break; t = f.num; break;
            case 2: if (f.wire != 2) break; name = f.sub; break;
            case 3: if (f.wire != 2) break; if (key_value(f.sub, a, c->fallback) < 0) goto done; break;
            case 4: if (f.wire != 0) break; d = (uint32_t)f.num; break;
            }
        }
        if (check_ts(t, "event time") < 0) goto done;
        PyObject *o = PyLong_FromUnsignedLongLong(t);
        if (!o) goto done;
        PyList_SET_ITEM(ts, i, o);
        o = name.p ? utf8(name) : (Py_INCREF(str_empty), str_empty);
        if (!o) goto done;
        PyList_SET_ITEM(names, i, o);
        o = PyLong_FromUnsignedLongLong(d);
        if (!o) goto done;
        PyList_SET_ITEM(dropped, i, o);
    }
    rc = 0;
    if (PyList_Append(cols[C_EV_TS], ts) < 0 || PyList_Append(cols[C_EV_NAME], names) < 0 ||
        PyList_Append(cols[C_EV_ATTRS], attrs) < 0 || PyList_Append(cols[C_EV_DROPPED], dropped) < 0) rc = -1;
done:
    Py_XDECREF(ts); Py_XDECREF(names); Py_XDECREF(attrs); Py_XDECREF(dropped);
    return rc;
}

static int span_links(Ctx *c, Buf *lns, Py_ssize_t n) {
    PyObject **cols = c->cols;
    static const int lcols[6] = {C_LN_TRACE, C_LN_SPAN, C_LN_STATE, C_LN_ATTRS, C_LN_FLAGS, C_LN_DROPPED};
    if (n == 0) {
        for (int i = 0; i < 6; i++) if (PyList_Append(cols[lcols[i]], c->none) < 0) return -1;
        return 0;
    }
    PyObject *lists[6] = {0};
    int rc = -1;
    for (int i = 0; i < 6; i++) if (!(lists[i] = PyList_New(n))) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        Buf b = lns[i]; Field f; Buf tid = {NULL, NULL}, sid = {NULL, NULL}, state = {NULL, NULL};
        uint64_t flags = 0, d = 0;
        PyObject *a = PyDict_New();
        if (!a) goto done;
        PyList_SET_ITEM(lists[3], i, a);
        while (b.p < b.end) {
            if (next_field(&b, &f) < 0) goto done;
            switch (f.field) {
            case 1: if (f.wire != 2) break; tid = f.sub; break;
            case 2: if (f.wire != 2) break; sid = f.sub; break;
            case 3: if (f.wire != 2) break; state = f.sub; break;
            case 4: if (f.wire != 2) break; if (key_value(f.sub, a, c->fallback) < 0) goto done; break;
            case 5: if (f.wire != 0) break; d = (uint32_t)f.num; break;
            case 6: if (f.wire != 5) break; flags = f.num; break;
            }
        }
        PyObject *o;
        if (!(o = hex_id(tid, 16, "link trace_id"))) goto done;
        PyList_SET_ITEM(lists[0], i, o);
        if (!(o = hex_id(sid, 8, "link span_id"))) goto done;
        PyList_SET_ITEM(lists[1], i, o);
        if (!(o = state.p ? utf8(state) : (Py_INCREF(str_empty), str_empty))) goto done;
        PyList_SET_ITEM(lists[2], i, o);
        if (!(o = PyLong_FromUnsignedLongLong(flags))) goto done;
        PyList_SET_ITEM(lists[4], i, o);
        if (!(o = PyLong_FromUnsignedLongLong(d))) goto done;
        PyList_SET_ITEM(lists[5], i, o);
    }
    rc = 0;
    for (int i = 0; i < 6; i++) if (PyList_Append(cols[lcols[i]], lists[i]) < 0) rc = -1;
done:
    for (int i = 0; i < 6; i++) Py_XDECREF(lists[i]);
    return rc;
}

#define MAX_NESTED 4096

/* Append to a growable array of sub-buffers that starts on the stack. */
static int push_sub(Buf **arr, Py_ssize_t *n, Py_ssize_t *cap, Buf *stack, Buf sub) {
    if (*n == *cap) {
        if (*cap >= MAX_NESTED * 64) return fail("invalid_value", "too many events or links in one span");
        Buf *grown = PyMem_Malloc(sizeof(Buf) * (*cap) * 2);
        if (!grown) { PyErr_NoMemory(); return -1; }
        memcpy(grown, *arr, sizeof(Buf) * (*n));
        if (*arr != stack) PyMem_Free(*arr);
        *arr = grown;
        *cap *= 2;
    }
    (*arr)[(*n)++] = sub;
    return 0;
}

static int one_span(Ctx *c, Buf b) {
    PyObject **cols = c->cols;
    Field f;
    Buf tid = {NULL, NULL}, sid = {NULL, NULL}, pid = {NULL, NULL}, state = {NULL, NULL}, name = {NULL, NULL};
    Buf status_msg = {NULL, NULL};
    uint64_t kind = 0, start = 0, end = 0, dropped_attrs = 0, dropped_events = 0, dropped_links = 0, flags = 0;
    uint64_t status_code = 0;
    Buf stack_ev[16], stack_ln[16];
    Buf *evs = stack_ev, *lns = stack_ln;
    Py_ssize_t nev = 0, nln = 0, cap_ev = 16, cap_ln = 16;
    int rc = -1;
    PyObject *attrs = PyDict_New();
    if (!attrs) return -1;
    while (b.p < b.end) {
        if (next_field(&b, &f) < 0) goto done;
        switch (f.field) {
        case 1: if (f.wire != 2) break; tid = f.sub; break;
        case 2: if (f.wire != 2) break; sid = f.sub; break;
        case 3: if (f.wire != 2) break; state = f.sub; break;
        case 4: if (f.wire != 2) break; pid = f.sub; break;
        case 5: if (f.wire != 2) break; name = f.sub; break;
        case 6: if (f.wire != 0) break; kind = f.num; break;
        case 7: if (f.wire != 1) break; start = f.num; break;
        case 8: if (f.wire != 1) break; end = f.num; break;
        case 9: if (f.wire != 2) break; if (key_value(f.sub, attrs, c->fallback) < 0) goto done; break;
        case 10: if (f.wire != 0) break; dropped_attrs = (uint32_t)f.num; break;
        case 11:
            if (f.wire != 2) break;
            if (push_sub(&evs, &nev, &cap_ev, stack_ev, f.sub) < 0) goto done;
            break;
        case 12: if (f.wire != 0) break; dropped_events = (uint32_t)f.num; break;
        case 13:
            if (f.wire != 2) break;
            if (push_sub(&lns, &nln, &cap_ln, stack_ln, f.sub) < 0) goto done;
            break;
        case 14: if (f.wire != 0) break; dropped_links = (uint32_t)f.num; break;
        case 15: {
            if (f.wire != 2) break;
            Buf s = f.sub; Field g;
            while (s.p < s.end) {
                if (next_field(&s, &g) < 0) goto done;
                if (g.field == 2) { if (g.wire != 2) continue; status_msg = g.sub; }
                else if (g.field == 3) { if (g.wire != 0) continue; status_code = g.num; }
            }
            break;
        }
        case 16: if (f.wire != 5) break; flags = f.num; break;
        }
    }
    if (check_ts(start > end ? start : end, "span time") < 0) goto done;
    /* Build every value first, then append: a failure leaves no half row behind. */
    {
        PyObject *v[NCOLS] = {0};
        int ok = 1;
        v[C_TS] = PyLong_FromUnsignedLongLong(start);
        v[C_TRACE_ID] = hex_id(tid, 16, "trace_id");
        ok = v[C_TS] && v[C_TRACE_ID];
        if (ok) ok = (v[C_SPAN_ID] = hex_id(sid, 8, "span_id")) != NULL;
        if (ok) ok = (v[C_PARENT] = hex_id(pid, 8, "parent_span_id")) != NULL;
        if (ok) ok = (v[C_STATE] = state.p ? utf8(state) : (Py_INCREF(str_empty), str_empty)) != NULL;
        if (ok) ok = (v[C_NAME] = name.p ? utf8(name) : (Py_INCREF(str_empty), str_empty)) != NULL;
        if (ok) ok = (v[C_STATUS_MESSAGE] = status_msg.p ? utf8(status_msg) : (Py_INCREF(str_empty), str_empty)) != NULL;
        if (ok) {
            /* enums are int32 on the wire: protobuf keeps the low 32 bits of the varint */
            int32_t k = (int32_t)(uint32_t)kind, sc = (int32_t)(uint32_t)status_code;
            v[C_KIND] = kind_strs[(k >= 0 && k < 6) ? k : 0]; Py_INCREF(v[C_KIND]);
            v[C_STATUS_CODE] = status_strs[(sc >= 0 && sc < 3) ? sc : 0]; Py_INCREF(v[C_STATUS_CODE]);
            v[C_SERVICE] = c->service; Py_INCREF(c->service);
            v[C_RES_ATTRS] = c->res_attrs; Py_INCREF(c->res_attrs);
            v[C_SCOPE_NAME] = c->scope_name; Py_INCREF(c->scope_name);
            v[C_SCOPE_VERSION] = c->scope_version; Py_INCREF(c->scope_version);
            v[C_SPAN_ATTRS] = attrs; Py_INCREF(attrs);
            v[C_RES_SCHEMA] = c->res_schema; Py_INCREF(c->res_schema);
            v[C_RES_DROPPED] = c->res_dropped; Py_INCREF(c->res_dropped);
            v[C_SCOPE_ATTRS] = c->scope_attrs; Py_INCREF(c->scope_attrs);
            v[C_SCOPE_DROPPED] = c->scope_dropped; Py_INCREF(c->scope_dropped);
            v[C_SCOPE_SCHEMA] = c->scope_schema; Py_INCREF(c->scope_schema);
            ok = (v[C_DURATION] = PyLong_FromUnsignedLongLong(end > start ? end - start : 0)) &&
                 (v[C_FLAGS] = PyLong_FromUnsignedLongLong(flags)) &&
                 (v[C_DROPPED_ATTRS] = PyLong_FromUnsignedLongLong(dropped_attrs)) &&
                 (v[C_DROPPED_EVENTS] = PyLong_FromUnsignedLongLong(dropped_events)) &&
                 (v[C_DROPPED_LINKS] = PyLong_FromUnsignedLongLong(dropped_links));
        }
        if (ok) {
            /* events and links append to their own columns; check them before the scalar columns */
            Py_ssize_t before_ev = PyList_GET_SIZE(cols[C_EV_TS]);
            if (span_events(c, evs, nev) < 0) ok = 0;
            else if (span_links(c, lns, nln) < 0) {
                ok = 0;
                static const int evcols[4] = {C_EV_TS, C_EV_NAME, C_EV_ATTRS, C_EV_DROPPED};
                for (int i = 0; i < 4; i++) PyList_SetSlice(cols[evcols[i]], before_ev, PY_SSIZE_T_MAX, NULL);
            }
        }
        if (ok) {
            for (int i = 0; i < NCOLS; i++) {
                if (!v[i]) continue; /* event and link columns were appended above */
                if (PyList_Append(cols[i], v[i]) < 0) { ok = 0; break; }
            }
        }
        for (int i = 0; i < NCOLS; i++) Py_XDECREF(v[i]);
        if (ok) rc = 0;
    }
done:
    if (evs != stack_ev) PyMem_Free(evs);
    if (lns != stack_ln) PyMem_Free(lns);
    Py_DECREF(attrs);
    return rc;
}

static void clear_scope(Ctx *c) {
    Py_CLEAR(c->scope_name); Py_CLEAR(c->scope_version); Py_CLEAR(c->scope_attrs);
    Py_CLEAR(c->scope_dropped); Py_CLEAR(c->scope_schema);
}

static void clear_resource(Ctx *c) {
    Py_CLEAR(c->res_attrs); Py_CLEAR(c->service); Py_CLEAR(c->res_schema); Py_CLEAR(c->res_dropped);
}

static int scope_spans(Ctx *c, Buf b, Py_ssize_t *nspans) {
    /* First pass: scope fields and schema URL (they may follow the spans on the wire). */
    Buf scan = b, schema = {NULL, NULL}, name = {NULL, NULL}, version = {NULL, NULL};
    Field f;
    uint64_t dropped = 0;
    c->scope_attrs = PyDict_New();
    if (!c->scope_attrs) return -1;
    while (scan.p < scan.end) {
        if (next_field(&scan, &f) < 0) return -1;
        if (f.field == 3 && f.wire == 2) { schema = f.sub; continue; }
        if (f.field != 1 || f.wire != 2) continue;
        Buf scope = f.sub;
        Field g;
        while (scope.p < scope.end) {
            if (next_field(&scope, &g) < 0) return -1;
            switch (g.field) {
            case 1: if (g.wire == 2) name = g.sub; break;
            case 2: if (g.wire == 2) version = g.sub; break;
            case 3: if (g.wire == 2 && key_value(g.sub, c->scope_attrs, c->fallback) < 0) return -1; break;
            case 4: if (g.wire == 0) dropped = (uint32_t)g.num; break;
            }
        }
    }
    if (!(c->scope_name = name.p ? utf8(name) : (Py_INCREF(str_empty), str_empty))) return -1;
    if (!(c->scope_version = version.p ? utf8(version) : (Py_INCREF(str_empty), str_empty))) return -1;
    if (!(c->scope_schema = schema.p ? utf8(schema) : (Py_INCREF(str_empty), str_empty))) return -1;
    if (!(c->scope_dropped = PyLong_FromUnsignedLongLong(dropped))) return -1;
    while (b.p < b.end) {
        if (next_field(&b, &f) < 0) return -1;
        if (f.field == 2 && f.wire == 2) {
            if (one_span(c, f.sub) < 0) return -1;
            (*nspans)++;
        }
    }
    return 0;
}

static int resource_spans(Ctx *c, Buf b, Py_ssize_t *nspans) {
    /* First pass: resource fields and schema URL (they may follow the spans on the wire). A
       resource that appears twice is merged, as protobuf merges repeated singular messages. */
    Buf scan = b, schema = {NULL, NULL};
    Field f;
    uint64_t dropped = 0;
    c->res_attrs = PyDict_New();
    if (!c->res_attrs) return -1;
    while (scan.p < scan.end) {
        if (next_field(&scan, &f) < 0) return -1;
        if (f.field == 3 && f.wire == 2) { schema = f.sub; continue; }
        if (f.field != 1 || f.wire != 2) continue;
        Buf resource = f.sub;
        Field g;
        while (resource.p < resource.end) {
            if (next_field(&resource, &g) < 0) return -1;
            if (g.field == 1 && g.wire == 2) {
                if (key_value(g.sub, c->res_attrs, c->fallback) < 0) return -1;
            } else if (g.field == 2 && g.wire == 0) {
                dropped = (uint32_t)g.num;
            }
        }
    }
    if (!(c->res_schema = schema.p ? utf8(schema) : (Py_INCREF(str_empty), str_empty))) return -1;
    if (!(c->res_dropped = PyLong_FromUnsignedLongLong(dropped))) return -1;
    /* ServiceName: service.name, else unknown_service[:process.executable.name] */
    PyObject *name = PyDict_GetItemWithError(c->res_attrs, key_service_name);
    if (name && PyUnicode_GET_LENGTH(name) > 0) { Py_INCREF(name); c->service = name; }
    else if (PyErr_Occurred()) return -1;
    else {
        PyObject *exe = PyDict_GetItemWithError(c->res_attrs, key_executable);
        if (exe && PyUnicode_GET_LENGTH(exe) > 0) c->service = PyUnicode_FromFormat("unknown_service:%U", exe);
        else if (PyErr_Occurred()) return -1;
        else c->service = PyUnicode_FromString("unknown_service");
        if (!c->service) return -1;
    }
    while (b.p < b.end) {
        if (next_field(&b, &f) < 0) return -1;
        if (f.field == 2 && f.wire == 2) {
            int rc = scope_spans(c, f.sub, nspans);
            clear_scope(c);
            if (rc < 0) return -1;
        }
    }
    return 0;
}

static PyObject *decode_spans(PyObject *self, PyObject *args) {
    Py_buffer payload;
    PyObject *columns, *none, *fallback;
    if (!PyArg_ParseTuple(args, "y*OOO", &payload, &columns, &none, &fallback)) return NULL;
    PyObject *result = NULL;
    Ctx c;
    memset(&c, 0, sizeof c);
    PyObject *cols[NCOLS];
    if (!PyList_Check(columns) || PyList_GET_SIZE(columns) != NCOLS) {
        PyErr_SetString(PyExc_TypeError, "columns must be a list of 34 lists");
        goto out;
    }
    for (int i = 0; i < NCOLS; i++) {
        cols[i] = PyList_GET_ITEM(columns, i);
        if (!PyList_Check(cols[i])) { PyErr_SetString(PyExc_TypeError, "every column must be a list"); goto out; }
    }
    c.cols = cols; c.none = none; c.fallback = fallback;
    Buf b = {(const uint8_t *)payload.buf, (const uint8_t *)payload.buf + payload.len};
    Py_ssize_t nspans = 0, nresources = 0;
    Field f;
    /* Pass 1: refuse whatever the protobuf library refuses, before any row is built. */
    if (validate(b) < 0) goto out;
    while (b.p < b.end) {
        if (next_field(&b, &f) < 0) goto out;
        if (f.field == 1) {
            if (f.wire != 2) continue;
            nresources++;
            int rc = resource_spans(&c, f.sub, &nspans);
            clear_scope(&c);
            clear_resource(&c);
            if (rc < 0) goto out;
        }
    }
    result = Py_BuildValue("(nn)", nspans, nresources);
out:
    clear_scope(&c);
    clear_resource(&c);
    PyBuffer_Release(&payload);
    return result;
}

static PyMethodDef methods[] = {
    {"decode_spans", decode_spans, METH_VARARGS,
     "decode_spans(payload, columns, none, fallback) -> (spans, resource_spans)"},
    {"schema", schema, METH_NOARGS,
     "schema() -> {message: {field number: (kind, message or None)}}: the messages the validator checks"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastotlp", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastotlp(void) {
    for (int i = 0; i < 6; i++) if (!(kind_strs[i] = PyUnicode_InternFromString(SPAN_KINDS[i]))) return NULL;
    for (int i = 0; i < 3; i++) if (!(status_strs[i] = PyUnicode_InternFromString(STATUS_CODES[i]))) return NULL;
    if (!(str_true = PyUnicode_InternFromString("true")) || !(str_false = PyUnicode_InternFromString("false")) ||
        !(str_empty = PyUnicode_InternFromString("")) ||
        !(key_service_name = PyUnicode_InternFromString("service.name")) ||
        !(key_executable = PyUnicode_InternFromString("process.executable.name")))
        return NULL;
    return PyModule_Create(&module);
}
