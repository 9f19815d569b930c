// A JVM that allocates short-lived 8 KB arrays over a live set it keeps:
//   java GcLoad <live_mb> <alloc_mb_per_s, 0 = as fast as it can> <seconds>
// With a live set close to the heap (850 MB in -Xmx1g) every young collection promotes and the
// old generation fills: collections back to back, most of the time in GC (a death spiral).
// With a small live set and a paced rate it is a busy, healthy service.
// Prints one line at the end: allocated bytes and seconds.
public class GcLoad {
    static volatile Object sink;

    public static void main(String[] args) throws Exception {
        int liveMb = Integer.parseInt(args[0]);
        long ratePerS = Long.parseLong(args[1]) << 20;
        double seconds = Double.parseDouble(args[2]);
        byte[][] live = new byte[liveMb * 128][];
        for (int i = 0; i < live.length; i++) {
            live[i] = new byte[8192];
        }
        byte[][] recent = new byte[4096][];       // survives a little while: some promotion
        long start = System.nanoTime(), allocated = 0;
        int k = 0;
        while (System.nanoTime() - start < seconds * 1e9) {
            for (int i = 0; i < 128; i++) {       // 1 MB per round
                byte[] b = new byte[8192];
                recent[k++ & 4095] = b;
                sink = b;
            }
            allocated += 128 * 8192;
            if (liveMb > 0 && (k & 65535) == 0) {  // churn the live set a little too
                live[(k >>> 7) % live.length] = new byte[8192];
            }
            if (ratePerS > 0) {
                long due = start + (long) (allocated * 1e9 / ratePerS);
                long wait = due - System.nanoTime();
                if (wait > 0) {
                    Thread.sleep(wait / 1_000_000, (int) (wait % 1_000_000));
                }
            }
        }
        System.out.println("allocated " + allocated + " bytes in " + (System.nanoTime() - start) / 1e9 + " s");
    }
}
