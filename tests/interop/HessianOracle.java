// The independent Hessian 2 oracle for our codec: Caucho's own Hessian2Input/Hessian2Output.
//
//   java HessianOracle roundtrip   < frames   decode each frame with Caucho, encode it back
//   java HessianOracle samples                Caucho's encoding of a fixed set of values
//
// Frames on stdin/stdout are a 4-byte big-endian length and that many bytes.
import com.caucho.hessian.io.Hessian2Input;
import com.caucho.hessian.io.Hessian2Output;
import java.io.*;
import java.util.*;

public class HessianOracle {
    /** A typed object both sides know (fields in declaration order). */
    public static class OrderLine implements Serializable {
        public long itemId;
        public int quantity;
        public String note;
        public OrderLine() {}
        public OrderLine(long itemId, int quantity, String note) {
            this.itemId = itemId; this.quantity = quantity; this.note = note;
        }
    }

    static byte[] encode(Object value) throws IOException {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        Hessian2Output out = new Hessian2Output(bytes);
        out.writeObject(value);
        out.flush();
        return bytes.toByteArray();
    }

    static void frame(DataOutputStream out, byte[] data) throws IOException {
        out.writeInt(data.length);
        out.write(data);
    }

    public static void main(String[] args) throws Exception {
        DataOutputStream out = new DataOutputStream(new BufferedOutputStream(System.out));
        if (args[0].equals("roundtrip")) {
            DataInputStream in = new DataInputStream(new BufferedInputStream(System.in));
            while (true) {
                int length;
                try { length = in.readInt(); } catch (EOFException end) { break; }
                byte[] data = new byte[length];
                in.readFully(data);
                Hessian2Input hin = new Hessian2Input(new ByteArrayInputStream(data));
                frame(out, encode(hin.readObject()));
            }
        } else {
            List<Object> list = new ArrayList<>(Arrays.asList(1, 2, 3));
            Map<String, Object> map = new HashMap<>();
            map.put("stock", 100);
            Object[] samples = {
                0, 47, -16, 48, -2048, 2047, 262143, -262144, 1 << 30, Integer.MIN_VALUE,
                0L, 15L, -8L, 2047L, 262143L, 1L << 31, Long.MAX_VALUE, Long.MIN_VALUE,
                0.0, 1.0, 1.5, -127.0, 32767.0, 0.001, 3.141592653589793, 1e300,
                "", "hi", "双十一", "a\uD83D\uDE00b", new String(new char[1500]).replace('\0', 'x'),
                new String(new char[40000]).replace('\0', 'y'),
                new byte[0], new byte[] {1, 2, 3}, new byte[5000],
                true, false, null, new Date(1731254400000L), new Date(1731254400123L),
                list, map, new OrderLine(7L, 2, "gift"),
            };
            for (Object sample : samples) frame(out, encode(sample));
        }
        out.flush();
    }
}
