cdef extern from "fp_bucket.h" nogil:
    bint fp_bucket_take(double *tokens, double *last, double rate, double burst)
