import GGUF
import Testing

/// Each block format, built by hand with known values, dequantizes to exactly those values.
@Suite struct DequantizeTests {
    typealias B = QuantBlockBuilder

    func dequantize(_ type: GGMLType, _ bytes: [UInt8], count: Int) throws -> [Float] {
        try bytes.withUnsafeBytes { try Dequantize.row(type, $0.baseAddress!, count: count) }
    }

    @Test func floats() throws {
        let values: [Float] = [1.5, -2.25, 0, 65504]
        var f32: [UInt8] = []
        var f16: [UInt8] = []
        var bf16: [UInt8] = []
        for v in values {
            withUnsafeBytes(of: v.bitPattern.littleEndian) { f32.append(contentsOf: $0) }
            f16 += B.half(v)
            let b = HalfFloat.bf16FromFloat(v)
            bf16 += [UInt8(b & 0xFF), UInt8(b >> 8)]
        }
        #expect(try dequantize(.f32, f32, count: 4) == values)
        #expect(try dequantize(.f16, f16, count: 4) == values)
        #expect(try dequantize(.bf16, bf16, count: 4) == [1.5, -2.25, 0, 65536])
    }

    @Test func q4_0() throws {
        let q = (0..<32).map { $0 % 16 }
        let out = try dequantize(.q4_0, B.half(0.5) + B.nibbles(q), count: 32)
        #expect(out == q.map { Float($0 - 8) * 0.5 })
    }

    @Test func q4_1() throws {
        let q = (0..<32).map { (31 - $0) % 16 }
        let out = try dequantize(.q4_1, B.half(0.25) + B.half(-1) + B.nibbles(q), count: 32)
        #expect(out == q.map { Float($0) * 0.25 - 1 })
    }

    @Test func q5_0() throws {
        let q = (0..<32).map { ($0 * 7) % 32 }
        let out = try dequantize(.q5_0, B.half(2) + B.highBits(q) + B.nibbles(q), count: 32)
        #expect(out == q.map { Float($0 - 16) * 2 })
    }

    @Test func q5_1() throws {
        let q = (0..<32).map { ($0 * 5 + 3) % 32 }
        let out = try dequantize(.q5_1, B.half(0.5) + B.half(3) + B.highBits(q) + B.nibbles(q), count: 32)
        #expect(out == q.map { Float($0) * 0.5 + 3 })
    }

    @Test func q8_0() throws {
        let q = (0..<32).map { $0 * 8 - 128 }
        let out = try dequantize(.q8_0, B.half(0.125) + q.map { UInt8(bitPattern: Int8($0)) }, count: 32)
        #expect(out == q.map { Float($0) * 0.125 })
    }

    @Test func q4_K() throws {
        let scales = [1, 2, 3, 63, 17, 33, 48, 5]
        let mins = [0, 1, 62, 4, 20, 40, 63, 9]
        let q = (0..<256).map { ($0 * 3) % 16 }
        // 4 chunks of 64 values: 32 bytes each, low nibbles = first 32 values, high nibbles = next 32.
        var qs: [UInt8] = []
        for chunk in 0..<4 {
            for l in 0..<32 { qs.append(UInt8(q[chunk * 64 + l]) | UInt8(q[chunk * 64 + 32 + l] << 4)) }
        }
        let bytes = B.half(0.5) + B.half(0.25) + B.kScales(scales, mins) + qs
        #expect(bytes.count == 144)
        let out = try dequantize(.q4_K, bytes, count: 256)
        let expected = (0..<256).map { i in
            Float(0.5) * Float(scales[i / 32]) * Float(q[i]) - 0.25 * Float(mins[i / 32])
        }
        #expect(out == expected)
    }

    @Test func q5_K() throws {
        let scales = [4, 8, 15, 16, 23, 42, 60, 1]
        let mins = [3, 1, 4, 1, 5, 9, 26, 53]
        let q = (0..<256).map { ($0 * 11) % 32 }
        var qh = [UInt8](repeating: 0, count: 32)
        var qs: [UInt8] = []
        for chunk in 0..<4 {
            for l in 0..<32 {
                let a = q[chunk * 64 + l]
                let b = q[chunk * 64 + 32 + l]
                qs.append(UInt8(a & 0xF) | UInt8((b & 0xF) << 4))
                if a & 0x10 != 0 { qh[l] |= UInt8(1 << (2 * chunk)) }
                if b & 0x10 != 0 { qh[l] |= UInt8(1 << (2 * chunk + 1)) }
            }
        }
        let bytes = B.half(0.125) + B.half(0.5) + B.kScales(scales, mins) + qh + qs
        #expect(bytes.count == 176)
        let out = try dequantize(.q5_K, bytes, count: 256)
        let expected = (0..<256).map { i in
            Float(0.125) * Float(scales[i / 32]) * Float(q[i]) - 0.5 * Float(mins[i / 32])
        }
        #expect(out == expected)
    }

    @Test func q6_K() throws {
        let q = (0..<256).map { ($0 * 13) % 64 }  // stored values 0...63, meaning q - 32
        let scales: [Int8] = [1, -2, 3, -4, 5, -6, 7, -8, 9, -10, 11, -12, 13, -14, 15, -16]
        var ql = [UInt8](repeating: 0, count: 128)
        var qh = [UInt8](repeating: 0, count: 64)
        for half in 0..<2 {
            for l in 0..<32 {
                let base = half * 128
                let v = [q[base + l], q[base + l + 32], q[base + l + 64], q[base + l + 96]]
                ql[half * 64 + l] = UInt8(v[0] & 0xF) | UInt8((v[2] & 0xF) << 4)
                ql[half * 64 + l + 32] = UInt8(v[1] & 0xF) | UInt8((v[3] & 0xF) << 4)
                qh[half * 32 + l] =
                    UInt8(v[0] >> 4) | UInt8((v[1] >> 4) << 2) | UInt8((v[2] >> 4) << 4)
                    | UInt8((v[3] >> 4) << 6)
            }
        }
        let bytes = ql + qh + scales.map { UInt8(bitPattern: $0) } + B.half(0.5)
        #expect(bytes.count == 210)
        let out = try dequantize(.q6_K, bytes, count: 256)
        let expected = (0..<256).map { i in Float(0.5) * Float(scales[i / 16]) * Float(q[i] - 32) }
        #expect(out == expected)
    }

    @Test func refusesWhatItCannotDo() {
        #expect(throws: Dequantize.Failure.self) { try dequantize(.q2_K, [UInt8](repeating: 0, count: 84), count: 256) }
        #expect(throws: Dequantize.Failure.self) { try dequantize(.q4_0, [UInt8](repeating: 0, count: 18), count: 20) }
    }

    @Test func halfFloatRoundTrips() {
        for bits in stride(from: 0, through: 0xFFFF, by: 7) {
            let h = UInt16(bits)
            let f = HalfFloat.toFloat(h)
            if f.isNaN { continue }
            #expect(HalfFloat.fromFloat(f) == h)
        }
        #expect(HalfFloat.fromFloat(1e6) == 0x7C00)
        #expect(HalfFloat.toFloat(HalfFloat.fromFloat(0.1)) == 0.099975586)
    }
}
