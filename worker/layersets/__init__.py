"""Layer sets beyond one decomposition: operations on a finished set, combining uploaded layers,
decomposition trees and their exports, choosing the layer count, and the classic (no-GPU) decomposer.

Plain CPU functions (numpy, Pillow, scipy; never torch): the job tasks decode a message, call one of
them and store what it returns.
"""
