/* The least CPU a relay on this machine can spend per byte: bench/transfer.py's floor.
 *
 * Listens on 127.0.0.1 (port 0; prints "listening PORT"), then forever: accepts the
 * receiver, then the sender, and moves the sender's bytes to the receiver with blocking
 * splice(2) through a 1 MiB pipe, as retreatkit's relay does, until the sender's end.
 * No pairing, no parsing, no threads, no Python, one direction: whatever this costs per
 * GiB is the kernel's TCP work on loopback, which any relay pays.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#define PIPE_BYTES (1 << 20)
#define SEND_BUFFER (4 << 20)

/* as retreatkit's relay: a fixed send buffer only where net.core.wmem_max allows all of it */
static int send_buffer_allowed(void) {
    long allowed = 0;
    FILE *f = fopen("/proc/sys/net/core/wmem_max", "r");
    if (f) {
        if (fscanf(f, "%ld", &allowed) != 1)
            allowed = 0;
        fclose(f);
    }
    return allowed >= SEND_BUFFER;
}

static int relay(int from, int to, int pipe_r, int pipe_w) {
    for (;;) {
        ssize_t got = splice(from, NULL, pipe_w, NULL, PIPE_BYTES, SPLICE_F_MOVE);
        if (got == 0)
            return 0;
        if (got < 0)
            return -1;
        while (got > 0) {
            ssize_t put = splice(pipe_r, NULL, to, NULL, (size_t)got, SPLICE_F_MOVE);
            if (put <= 0)
                return -1;
            got -= put;
        }
    }
}

int main(void) {
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in at = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t size = sizeof at;
    if (listener < 0 || bind(listener, (struct sockaddr *)&at, sizeof at) < 0 ||
        listen(listener, 4) < 0 || getsockname(listener, (struct sockaddr *)&at, &size) < 0) {
        perror("listen");
        return 1;
    }
    printf("listening %d\n", ntohs(at.sin_port));
    fflush(stdout);
    for (;;) {
        int receiver = accept(listener, NULL, NULL);
        int sender = accept(listener, NULL, NULL);
        int ends[2];
        if (receiver < 0 || sender < 0 || pipe(ends) < 0) {
            perror("accept");
            return 1;
        }
        fcntl(ends[1], F_SETPIPE_SZ, PIPE_BYTES);
        if (send_buffer_allowed()) {
            int buffer = SEND_BUFFER;
            setsockopt(receiver, SOL_SOCKET, SO_SNDBUF, &buffer, sizeof buffer);
        }
        if (relay(sender, receiver, ends[0], ends[1]) < 0)
            perror("splice");
        close(ends[0]);
        close(ends[1]);
        close(sender);
        close(receiver);
    }
}
