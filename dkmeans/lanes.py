"""The nearest centre of every row, compared a vector of centres at a time.

Scanning a row's few centres one at a time, as a compiled loop must, either branches on
every nearer centre (mispredicted on structureless rows: an argmin over 16 centres took
13-18 ns a row, a tenth of a whole Lloyd pass at 2M x 32, k = 16) or carries one
dependency from centre to centre. LLVM does not vectorise a search for the index of a
minimum, and numba has no vector types, so :func:`nearest_in_lanes` is written in LLVM IR
(a numba intrinsic): every row's centres are compared 32 bytes at a time (8 float32 or
4 float64 lanes, each keeping its own nearest), and the lanes are then reduced without a
branch (the smallest value, then the lowest index holding it). It gives the index and the
value the sequential scan gives (ties: the lowest index) for values that are not NaN.

Without numba, :func:`nearest_in_lanes` is the same in NumPy.

numba's on-disk cache checks only the file of the function it compiled: after editing
this module, touch :mod:`dkmeans.loops` (or clear its ``__pycache__``), or the cached
loops keep the IR they were compiled with.
"""

from __future__ import annotations

import numpy as np

from .engine import numba

#: Bytes compared at once: AVX2's registers (LLVM splits the vectors on narrower CPUs).
LANE_BYTES = 32


def lanes_of(partial, centers_sq) -> int:
    """Values compared at once: those of the wider of the two dtypes in one vector
    (callable from compiled loops too)."""
    return LANE_BYTES // max(partial.itemsize, centers_sq.itemsize)


if numba is not None:
    lanes_of = numba.extending.register_jitable(lanes_of)


def nearest_in_lanes(partial, centers_sq, lo, n_vectors, best_value, best_index, second):
    """For every row ``i`` of ``partial`` (2-D, C order), the first ``j`` below
    ``n_vectors * lanes_of(partial, centers_sq)`` with the smallest
    ``partial[i, lo + j] + centers_sq[lo + j]`` (in the wider dtype of the two), into
    ``best_index[i]``, and that value into ``best_value[i]``; with ``second`` (None: not
    computed), the second smallest of those values into ``second[i]``. ``n_vectors`` is
    at least 1."""
    width = n_vectors * lanes_of(partial, centers_sq)
    values = partial[:, lo : lo + width] + centers_sq[lo : lo + width]
    n_rows = len(partial)
    best_index[:n_rows] = values.argmin(axis=1)
    best_value[:n_rows] = values[np.arange(n_rows), best_index[:n_rows]]
    if second is not None:
        second[:n_rows] = np.partition(values, 1, axis=1)[:, 1]


if numba is not None:
    from llvmlite import ir
    from numba import types

    @numba.extending.intrinsic
    def _nearest_in_lanes(
        typingctx, partial, centers_sq, lo, n_vectors, best_value, best_index, second
    ):
        float_types = (types.float32, types.float64)
        if not (
            isinstance(partial, types.Array)
            and partial.ndim == 2
            and partial.layout == "C"
            and partial.dtype in float_types
            and isinstance(centers_sq, types.Array)
            and centers_sq.dtype in float_types
            and centers_sq.layout == "C"
        ):
            return None
        index = types.int64
        signature = types.none(partial, centers_sq, index, index, best_value, best_index, second)

        def codegen(context, builder, signature, args):
            return _lanes_codegen(context, builder, signature, args)

        return signature, codegen

    def _lanes_codegen(context, builder, signature, args):
        """The IR of :func:`nearest_in_lanes`: a loop over the rows, in it a loop over
        the vectors of centres, then the branch-free reduction of the lanes. With a
        ``second`` array, every lane also keeps its second smallest value (as
        :func:`~dkmeans.loops.fold_candidate` does), and the row's second smallest is the
        smallest of the winning lane's second and the other lanes' smallest."""
        partial_type, centers_type = signature.args[0], signature.args[1]
        value_dtype = max(partial_type.dtype, centers_type.dtype, key=lambda t: t.bitwidth)
        bits = value_dtype.bitwidth
        lanes = LANE_BYTES * 8 // bits
        float_vector = ir.VectorType(context.get_value_type(value_dtype), lanes)
        index_type = ir.IntType(bits)  # indices as wide as the values: one register each
        index_vector = ir.VectorType(index_type, lanes)
        i32, i64 = ir.IntType(32), ir.IntType(64)
        partial_value, centers_value, lo, n_vectors, value_out, index_out, second_out = args
        with_second = not isinstance(signature.args[6], types.NoneType)
        partial = context.make_array(partial_type)(context, builder, partial_value)
        centers_sq = context.make_array(centers_type)(context, builder, centers_value).data
        best_values = context.make_array(signature.args[4])(context, builder, value_out).data
        best_indices = context.make_array(signature.args[5])(context, builder, index_out).data
        n_rows = builder.extract_value(partial.shape, 0)
        n_columns = builder.extract_value(partial.shape, 1)
        centers_sq = builder.gep(centers_sq, [lo])
        zero, one = ir.Constant(i64, 0), ir.Constant(i64, 1)

        def vector_at(pointer, vector, dtype):
            # lanes of dtype, widened to the values' dtype (float32 to float64: exact)
            at = builder.gep(pointer, [builder.mul(vector, ir.Constant(i64, lanes))])
            loaded_type = ir.VectorType(context.get_value_type(dtype), lanes)
            at = builder.bitcast(at, loaded_type.as_pointer())
            loaded = builder.load(at, align=dtype.bitwidth // 8)
            return loaded if dtype == value_dtype else builder.fpext(loaded, float_vector)

        def value_at(pointer, index, dtype):
            loaded = builder.load(builder.gep(pointer, [index]))
            return loaded if dtype == value_dtype else builder.fpext(loaded, float_vector.element)

        def values_at(row, vector):
            return builder.fadd(
                vector_at(row, vector, partial_type.dtype),
                vector_at(centers_sq, vector, centers_type.dtype),
            )

        def butterfly(vector, smaller):
            # every lane ends holding the smallest of all lanes
            width = lanes
            while width > 1:
                width //= 2
                order = ir.Constant(ir.VectorType(i32, lanes), [k ^ width for k in range(lanes)])
                swapped = builder.shuffle_vector(vector, vector, order)
                vector = builder.select(smaller(swapped, vector), swapped, vector)
            return vector

        entry = builder.block
        rows = builder.append_basic_block("lanes.rows")
        vectors = builder.append_basic_block("lanes.vectors")
        reduce = builder.append_basic_block("lanes.reduce")
        done = builder.append_basic_block("lanes.done")
        builder.cbranch(builder.icmp_signed(">", n_rows, zero), rows, done)

        builder.position_at_end(rows)
        i = builder.phi(i64)
        i.add_incoming(zero, entry)
        row = builder.gep(partial.data, [builder.add(builder.mul(i, n_columns), lo)])
        first_values = values_at(row, zero)
        first_indices = ir.Constant(index_vector, list(range(lanes)))
        no_seconds = ir.Constant(float_vector, [float("inf")] * lanes)
        builder.cbranch(builder.icmp_signed(">", n_vectors, one), vectors, reduce)

        # each lane keeps its nearest centre: strictly nearer replaces, so ties keep the first
        builder.position_at_end(vectors)
        vector = builder.phi(i64)
        lane_values, lane_indices, positions = (
            builder.phi(float_vector),
            *(builder.phi(index_vector) for _ in range(2)),
        )
        lane_seconds = builder.phi(float_vector)
        lane_seconds.add_incoming(no_seconds, rows)
        vector.add_incoming(one, rows)
        lane_values.add_incoming(first_values, rows)
        lane_indices.add_incoming(first_indices, rows)
        positions.add_incoming(ir.Constant(index_vector, list(range(lanes, 2 * lanes))), rows)
        candidates = values_at(row, vector)
        nearer = builder.fcmp_ordered("<", candidates, lane_values)
        # the second smallest: the smaller of it and the larger of the candidate and best
        larger = builder.select(nearer, lane_values, candidates)
        new_seconds = builder.select(
            builder.fcmp_ordered("<", larger, lane_seconds), larger, lane_seconds
        )
        lane_seconds.add_incoming(new_seconds, vectors)
        new_values = builder.select(nearer, candidates, lane_values)
        new_indices = builder.select(nearer, positions, lane_indices)
        next_vector = builder.add(vector, one)
        vector.add_incoming(next_vector, vectors)
        lane_values.add_incoming(new_values, vectors)
        lane_indices.add_incoming(new_indices, vectors)
        positions.add_incoming(
            builder.add(positions, ir.Constant(index_vector, [lanes] * lanes)), vectors
        )
        builder.cbranch(builder.icmp_signed("<", next_vector, n_vectors), vectors, reduce)

        # the smallest value of all lanes, then the lowest index of the lanes holding it
        builder.position_at_end(reduce)
        final_values, final_indices = builder.phi(float_vector), builder.phi(index_vector)
        final_values.add_incoming(first_values, rows)
        final_indices.add_incoming(first_indices, rows)
        final_values.add_incoming(new_values, vectors)
        final_indices.add_incoming(new_indices, vectors)
        final_seconds = builder.phi(float_vector)
        final_seconds.add_incoming(no_seconds, rows)
        final_seconds.add_incoming(new_seconds, vectors)
        smallest = butterfly(final_values, lambda a, b: builder.fcmp_ordered("<", a, b))
        holding = builder.fcmp_ordered("==", final_values, smallest)
        absent = ir.Constant(index_vector, [2 ** (bits - 1) - 1] * lanes)
        indices = builder.select(holding, final_indices, absent)
        lowest = butterfly(indices, lambda a, b: builder.icmp_signed("<", a, b))
        index = builder.extract_element(lowest, ir.Constant(i32, 0))
        if bits < 64:
            index = builder.sext(index, i64)
        # NaN holds no lane: stay inside the row (the pass's finiteness check reports it)
        last = builder.sub(builder.mul(n_vectors, ir.Constant(i64, lanes)), one)
        index = builder.select(builder.icmp_unsigned("<", index, last), index, last)
        # the value at that index as the sequential scan adds it (the bits of +0.0 or -0.0)
        value = builder.fadd(
            value_at(row, index, partial_type.dtype),
            value_at(centers_sq, index, centers_type.dtype),
        )
        builder.store(
            context.cast(builder, value, value_dtype, signature.args[4].dtype),
            builder.gep(best_values, [i]),
        )
        builder.store(index, builder.gep(best_indices, [i]))
        if with_second:
            # the winning lane offers its second smallest, every other lane its smallest
            winner = builder.icmp_signed("==", final_indices, lowest)
            offered = builder.select(winner, final_seconds, final_values)
            second = butterfly(offered, lambda a, b: builder.fcmp_ordered("<", a, b))
            second = builder.extract_element(second, ir.Constant(i32, 0))
            seconds = context.make_array(signature.args[6])(context, builder, second_out).data
            builder.store(
                context.cast(builder, second, value_dtype, signature.args[6].dtype),
                builder.gep(seconds, [i]),
            )
        next_i = builder.add(i, one)
        i.add_incoming(next_i, reduce)
        builder.cbranch(builder.icmp_signed("<", next_i, n_rows), rows, done)
        builder.position_at_end(done)
        return context.get_dummy_value()

    @numba.extending.overload(nearest_in_lanes, jit_options={"nogil": True})
    def _nearest_in_lanes_compiled(
        partial, centers_sq, lo, n_vectors, best_value, best_index, second
    ):
        def compiled(partial, centers_sq, lo, n_vectors, best_value, best_index, second):
            _nearest_in_lanes(partial, centers_sq, lo, n_vectors, best_value, best_index, second)

        return compiled
