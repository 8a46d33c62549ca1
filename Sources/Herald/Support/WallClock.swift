#if canImport(Glibc)
import Glibc
#endif

/// Time as message headers carry it.
enum WallClock {
    /// Nanoseconds since the Unix epoch, for send times: subscribers on other hosts compare them with their own
    /// clock, so it must be the wall clock, not a monotonic one. One vDSO call, no Foundation.
    static func nanosecondsSinceEpoch() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        return UInt64(truncatingIfNeeded: time.tv_sec) &* 1_000_000_000 &+ UInt64(truncatingIfNeeded: time.tv_nsec)
    }

    /// Monotonic nanoseconds, for ages that must not jump with the wall clock.
    static func monotonicNanoseconds() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(truncatingIfNeeded: time.tv_sec) &* 1_000_000_000 &+ UInt64(truncatingIfNeeded: time.tv_nsec)
    }
}
