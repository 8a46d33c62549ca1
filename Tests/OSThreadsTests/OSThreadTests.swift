import OSThreads
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("OS threads")
struct OSThreadTests {
    @Test func theBodyRunsOnANewThreadThatCarriesItsName() async throws {
        let seen = Mutex<(name: String, thread: pthread_t)?>(nil)
        let caller = pthread_self()
        try OSThread.start(name: "herald-test-thread-long-name") {
            let descriptor = open("/proc/thread-self/comm", O_RDONLY)
            var bytes = [UInt8](repeating: 0, count: 64)
            let count = bytes.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            close(descriptor)
            let name = String(decoding: bytes[..<max(0, count)], as: UTF8.self).filter { $0 != "\n" }
            seen.withLock { $0 = (name, pthread_self()) }
        }
        for _ in 0..<500 where seen.withLock({ $0 == nil }) { try await Task.sleep(for: .milliseconds(10)) }
        let result = try #require(seen.withLock { $0 })
        #expect(result.name == "herald-test-thr", "the kernel keeps the first 15 bytes")
        #expect(pthread_equal(result.thread, caller) == 0)
    }
}
