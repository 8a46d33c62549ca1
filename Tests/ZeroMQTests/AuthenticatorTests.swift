import Foundation
import Testing
import ZeroMQ

@Suite("ZAP authenticator")
struct AuthenticatorTests {
    @Test func onlyAdmittedKeysCompleteTheHandshakeAndTheirMessagesCarryTheUserID() async throws {
        try #require(ZMQContext.has("curve"), "libzmq here lacks CURVE; Debian's libzmq5 has it")
        let context = try ZMQContext()
        defer { context.terminate() }
        let server = try ZMQCurveKeyPair.generate()
        let friend = try ZMQCurveKeyPair.generate()
        let stranger = try ZMQCurveKeyPair.generate()
        let authenticator = try await ZMQAuthenticator.start(context: context) { request in
            request.domain == "test" && request.mechanism == "CURVE" && request.clientKey == friend.publicKey
                ? .allow(userID: "friend:\(request.clientKey ?? "")") : .deny(reason: "not a friend")
        }
        // A second authenticator on the same context cannot bind the ZAP endpoint.
        await #expect(throws: ZMQError.self) {
            _ = try await ZMQAuthenticator.start(context: context) { _ in .deny(reason: "") }
        }

        let pull = try ZMQSocket(context: context, type: .pull)
        try pull.set(.curveServer(true))
        try pull.set(.curveSecretKey(server.secretKey))
        try pull.set(.zapDomain("test"))
        try pull.set(.receiveTimeout(.seconds(5)))
        let endpoint = try pull.bind("tcp://127.0.0.1:*")
        func client(_ keys: ZMQCurveKeyPair) throws -> ZMQSocket {
            let push = try ZMQSocket(context: context, type: .push)
            try push.set(.linger(.zero))
            try push.set(.curveServerKey(server.publicKey))
            try push.set(.curvePublicKey(keys.publicKey))
            try push.set(.curveSecretKey(keys.secretKey))
            try push.connect(endpoint)
            return push
        }
        let refused = try client(stranger)
        let events = try refused.monitor(.handshakeFailedAuthentication)
        defer { events.close() }
        try refused.send(ZMQMessage(strings: ["from the stranger"]), dontWait: true)
        let admitted = try client(friend)
        try admitted.send(ZMQMessage(strings: ["from the friend"]))

        var frame = ZMQFrame()
        _ = try pull.receive(into: &frame)
        #expect(frame.bytes == Array("from the friend".utf8))
        #expect(frame.metadata("User-Id") == "friend:\(friend.publicKey)")
        #expect(frame.metadata("No-Such-Property") == nil)
        // Nothing from the stranger follows; its socket learns why, from an event.
        try pull.set(.receiveTimeout(.milliseconds(500)))
        #expect(throws: ZMQError.self) { _ = try pull.receive(into: &frame) }
        let event = try #require(events.receiveEvent(), "the refusal is reported to the refused client")
        #expect(event.event == .handshakeFailedAuthentication && event.value == 400, "\(event)")
        #expect(event.endpoint == endpoint)
        refused.close()
        admitted.close()
        pull.close()
        await authenticator.stop()
    }

    @Test func keysAreCheckedAndDerived() throws {
        let pair = try ZMQCurveKeyPair.generate()
        #expect(try ZMQCurveKeyPair(secretKey: pair.secretKey) == pair)
        #expect(ZMQCurveKeyPair.isValidKey(pair.publicKey))
        #expect(!ZMQCurveKeyPair.isValidKey(String(pair.publicKey.dropLast())))
        #expect(!ZMQCurveKeyPair.isValidKey(String(repeating: "\"", count: 40)), "not in the Z85 alphabet")
        #expect(throws: ZMQError.self) { try ZMQCurveKeyPair(secretKey: "short") }
        #expect(ZMQCurveKeyPair.z85(ofKey: [UInt8](repeating: 0, count: 32))?.count == 40)
        #expect(ZMQCurveKeyPair.z85(ofKey: [1, 2, 3]) == nil)
    }
}
