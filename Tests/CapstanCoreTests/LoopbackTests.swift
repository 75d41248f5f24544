import CapstanCore
import Testing

struct LoopbackTests {
    @Test(arguments: [
        ("localhost", true), ("LocalHost", true), ("127.0.0.1", true), ("127.3.2.1", true), ("127.255.255.255", true),
        ("::1", true), ("[::1]", true), ("0:0:0:0:0:0:0:1", true), ("0000::0001", true), ("::ffff:127.0.0.1", true),
        ("api.localhost", false), ("localhost.example.com", false), ("localhost.", false), ("128.0.0.1", false),
        ("10.0.0.1", false), ("0.0.0.0", false), ("::", false), ("[::]", false), ("::2", false), ("::ffff:10.0.0.1", false),
        ("example.com", false), ("127.0.0.1.nip.io", false), ("127.1", false), ("127.0.0.256", false), ("0127.0.0.1", false),
        ("", false), ("[]", false), ("1::1::1", false), (":::1", false),
    ])
    func loopbackHosts(_ host: String, _ loopback: Bool) {
        #expect(Loopback.isLoopbackHost(host) == loopback)
    }

    @Test(arguments: [
        ("fe80::1", [0xFE, 0x80] + [UInt8](repeating: 0, count: 13) + [1]),
        ("1:2:3:4:5:6:7:8", [0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0, 7, 0, 8]),
        ("::ffff:1.2.3.4", [UInt8](repeating: 0, count: 10) + [0xFF, 0xFF, 1, 2, 3, 4]),
        ("1::", [0, 1] + [UInt8](repeating: 0, count: 14)),
    ])
    func ipv6Addresses(_ text: String, _ bytes: [UInt8]) {
        #expect(Loopback.ipv6(text) == bytes)
    }

    @Test(arguments: ["1:2:3:4:5:6:7", "1:2:3:4:5:6:7:8:9", "12345::", "g::", "1:2:3:4:5:6:7::8", "1.2.3.4", ":1", "1:"])
    func malformedIPv6(_ text: String) {
        #expect(Loopback.ipv6(text) == nil)
    }

    @Test(arguments: [
        ("127.0.0.1:7070", "127.0.0.1", "7070"), ("localhost", "localhost", nil), ("[::1]:80", "::1", "80"), ("[::1]", "::1", nil),
        ("example.com:443", "example.com", "443"),
    ])
    func authorities(_ text: String, _ host: String, _ port: String?) throws {
        let split = try #require(Loopback.splitAuthority(text))
        #expect(split.host == host)
        #expect(split.port.map(String.init) == port)
    }

    @Test(arguments: ["", ":80", "::1", "[::1", "[::1]x", "host:", "host:123456", "host:8o", "[]:1", "a:b:c"])
    func malformedAuthorities(_ text: String) {
        #expect(Loopback.splitAuthority(text) == nil)
    }
}
