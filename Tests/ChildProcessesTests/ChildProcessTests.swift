import ChildProcesses
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Real processes (`/bin/sh`), as every user of ``ChildProcess`` runs them.
@Suite("Child processes")
struct ChildProcessTests {
    /// Collects the lines a child prints.
    final class Lines: Sendable {
        let lines = Mutex<[String]>([])
        var output: ChildProcess.Output {
            .lines { bytes in self.lines.withLock { $0.append(String(decoding: bytes, as: UTF8.self)) } }
        }
        var all: [String] { lines.withLock { $0 } }
    }

    @Test func linesArriveWholeAndInOrderWhateverTheReadsCut() async throws {
        let out = Lines()
        let err = Lines()
        // 20,000 lines, more than a pipe holds, so they arrive over many reads; the last has no newline.
        let child = try await ChildProcess.start(
            name: "sh", executable: "/bin/sh",
            arguments: ["-c", "i=0; while [ $i -lt 20000 ]; do echo line-$i; i=$((i+1)); done; printf tail; echo oops >&2"],
            standardOutput: out.output, standardError: err.output)
        #expect(await child.waitForExit(timeout: .seconds(30)) == 0)
        #expect(child.outputEnded)
        #expect(out.all == (0..<20_000).map { "line-\($0)" } + ["tail"])
        #expect(err.all == ["oops"])
    }

    @Test func theEnvironmentIsInheritedWithTheGivenVariablesLaidOver() async throws {
        let out = Lines()
        let child = try await ChildProcess.start(
            name: "sh", executable: "/bin/sh", arguments: ["-c", "echo \"$HERALD_CHILD_TEST:${PATH:+path}\""],
            environment: ["HERALD_CHILD_TEST": "given"], standardOutput: out.output)
        #expect(await child.waitForExit(timeout: .seconds(10)) == 0)
        #expect(out.all == ["given:path"])
    }

    @Test func aSignalledChildExitsWith128PlusTheSignal() async throws {
        let child = try await ChildProcess.start(name: "sleep", executable: "/bin/sleep", arguments: ["60"])
        #expect(child.isRunning)
        #expect(child.processID > 0)
        child.signal(SIGKILL)
        #expect(await child.waitForExit(timeout: .seconds(10)) == 128 + SIGKILL)
        #expect(!child.isRunning)
        child.signal(SIGKILL)  // after the exit: nothing happens, no other process is hit
    }

    @Test func stopEscalatesToSIGKILLWhenSIGTERMIsIgnored() async throws {
        let out = Lines()
        let child = try await ChildProcess.start(
            name: "stubborn", executable: "/bin/sh", arguments: ["-c", "trap '' TERM; echo ready; sleep 60 & wait"],
            standardOutput: out.output)
        for _ in 0..<500 where out.all.isEmpty { try await Task.sleep(for: .milliseconds(10)) }
        let clock = ContinuousClock()
        let start = clock.now
        let code = await child.stop(grace: .milliseconds(300))
        #expect(code == 128 + SIGKILL)
        #expect(clock.now - start < .seconds(10))
    }

    @Test func aMissingExecutableIsAnErrorThatNamesIt() async throws {
        await #expect {
            _ = try await ChildProcess.start(name: "missing", executable: "/nonexistent/herald", arguments: [])
        } throws: { error in
            "\(error)".contains("/nonexistent/herald")
        }
    }

    @Test func fileOutputIsAppendedToTheFile() async throws {
        let path = scratchPath("log")
        defer { unlink(path) }
        for word in ["first", "second"] {
            let child = try await ChildProcess.start(
                name: "sh", executable: "/bin/sh", arguments: ["-c", "echo \(word); echo \(word)-err >&2"],
                standardOutput: .file(path), standardError: .file(path))
            #expect(await child.waitForExit(timeout: .seconds(10)) == 0)
        }
        let out = Lines()
        let cat = try await ChildProcess.start(
            name: "cat", executable: "/bin/cat", arguments: [path], standardOutput: out.output)
        #expect(await cat.waitForExit(timeout: .seconds(10)) == 0)
        #expect(Set(out.all) == ["first", "first-err", "second", "second-err"])
        #expect(out.all.firstIndex(of: "first")! < out.all.firstIndex(of: "second")!)
    }

    @Test func aFileIsTheChildsOwnOutputNotAPipeThisProcessCopiesFrom() async throws {
        let path = scratchPath("out")
        defer { unlink(path) }
        let errors = Lines()
        let child = try await ChildProcess.start(
            name: "sh", executable: "/bin/sh",
            arguments: ["-c", "readlink /proc/$$/fd/1; readlink /proc/$$/fd/2 >&2"],
            standardOutput: .file(path), standardError: errors.output)
        #expect(await child.waitForExit(timeout: .seconds(10)) == 0)
        #expect(child.outputEnded)
        let written = Lines()
        let cat = try await ChildProcess.start(
            name: "cat", executable: "/bin/cat", arguments: [path], standardOutput: written.output)
        #expect(await cat.waitForExit(timeout: .seconds(10)) == 0)
        #expect(written.all == [path])
        // Standard error, read line by line, still goes through a pipe.
        #expect(errors.all.count == 1 && errors.all.allSatisfy { $0.hasPrefix("pipe:") })
    }

    @Test func aChildWritingOnlyToFilesCanStillBeStopped() async throws {
        let path = scratchPath("log")
        defer { unlink(path) }
        let child = try await ChildProcess.start(
            name: "sleep", executable: "/bin/sleep", arguments: ["60"], standardOutput: .file(path),
            standardError: .file(path))
        try await Task.sleep(for: .milliseconds(200))
        #expect(child.isRunning)
        let clock = ContinuousClock()
        let start = clock.now
        #expect(await child.stop(grace: .seconds(5)) == 128 + SIGTERM)
        #expect(clock.now - start < .seconds(5), "SIGTERM reached it")
    }

    @Test func aChildInItsOwnProcessGroupLeadsIt() async throws {
        let out = Lines()
        let child = try await ChildProcess.start(
            name: "sh", executable: "/bin/sh", arguments: ["-c", "cut -d' ' -f5 /proc/$$/stat"], standardOutput: out.output,
            ownProcessGroup: true)
        #expect(await child.waitForExit(timeout: .seconds(10)) == 0)
        let group = out.all.first.map { Int32($0.trimmingCharacters()) } ?? nil
        #expect(group == child.processID)
        #expect(group != getpgrp())
    }
}

extension String {
    fileprivate func trimmingCharacters() -> String {
        String(drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
    }
}

/// A path in /tmp that no other test or run uses, ending in `.extension`.
private func scratchPath(_ extension: String) -> String {
    "/tmp/herald-child-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).\(`extension`)"
}
