# Decimal digits of a C integer, shared by the compiled server call (_fastcall) and the
# compiled client call (_clientcall): JSON-RPC ids are written without a Python int.

cdef Py_ssize_t format_int(char* out, long long v) noexcept:
    """Decimal digits of v into out (at least 20 bytes); returns the length."""
    cdef char tmp[20]
    cdef Py_ssize_t n = 0, i
    cdef unsigned long long u = <unsigned long long>(-(v + 1)) + 1 if v < 0 else <unsigned long long>v
    while True:
        tmp[n] = <char>(48 + u % 10)
        n += 1
        u //= 10
        if u == 0:
            break
    i = 0
    if v < 0:
        out[0] = 45  # '-'
        i = 1
    while n:
        n -= 1
        out[i] = tmp[n]
        i += 1
    return i
