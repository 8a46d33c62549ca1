import Testing

@testable import HeraldBench

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Output file")
struct OutputFileTests {
    /// Appends `text` to the file at `path`, as the child writing it would.
    private func append(_ text: String, to path: String) {
        let descriptor = open(path, O_WRONLY | O_APPEND)
        #expect(descriptor >= 0)
        _ = Array(text.utf8).withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
        close(descriptor)
    }

    @Test func eachReadHandsOnTheWholeLinesWrittenSinceTheLastAndKeepsAnUnendedOne() throws {
        var file = try OutputFile()
        var lines: [String] = []
        func readNew() { file.readNewLines { lines.append(String(decoding: $0, as: UTF8.self)) } }

        readNew()
        #expect(lines.isEmpty)
        append("{\"seq\":1}\n{\"seq\":2}\n{\"se", to: file.path)
        readNew()
        #expect(lines == ["{\"seq\":1}", "{\"seq\":2}"])
        append("q\":3}\n", to: file.path)
        readNew()
        #expect(lines == ["{\"seq\":1}", "{\"seq\":2}", "{\"seq\":3}"])
    }

    @Test func theFileGoesWithTheLastReferenceToIt() throws {
        let path: String
        do {
            let file = try OutputFile()
            path = file.path
            #expect(access(path, F_OK) == 0)
        }
        #expect(access(path, F_OK) != 0)
    }
}
