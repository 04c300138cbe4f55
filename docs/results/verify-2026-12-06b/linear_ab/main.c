#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <time.h>
#include <omp.h>
int amx_linear(const uint16_t *x, int64_t m, int64_t k, int64_t x_stride, const uint16_t *packed, int64_t n,
               const float *bias, uint16_t *out, int threads);
int amx_linear_ready(void);
static double now(){struct timespec t; clock_gettime(CLOCK_MONOTONIC,&t); return t.tv_sec+t.tv_nsec*1e-9;}
extern int nb_bytes, nb_hint;
int main(int argc, char**argv){ int modes[][2]={{0,2},{-1,2},{1024,2}}; int nm=3; /* make_modes.py */ double bests[7], sums[7]; for(int i=0;i<7;i++){bests[i]=1e9;sums[i]=0;}
  amx_linear_ready();
  int M = atoi(argv[1]); int reps = atoi(argv[2]);
  int shapes[7][2] = {{576,576},{576,192},{576,192},{576,576},{576,1536},{576,1536},{1536,576}};
  uint16_t *w[30][7]; 
  for (int l=0;l<30;l++) for(int s=0;s<7;s++){ int k=shapes[s][0], n=shapes[s][1]; size_t sz=(size_t)((n+63)/64*64)*((k+31)/32*32)*2;
     w[l][s]=aligned_alloc(4096,(sz+4095)/4096*4096); for(size_t i=0;i<sz/2;i++) w[l][s][i]=(uint16_t)(0x3c00 + (i*2654435761u>>20)%256);}
  uint16_t *x = aligned_alloc(64, 64*1536*2); for(int i=0;i<64*1536;i++) x[i]=0x3f80;
  uint16_t *out = aligned_alloc(64, 64*1536*2);
  double best=1e9, tot=0;
  for(int r=0;r<reps;r++) for(int v=0;v<nm;v++){ nb_bytes=modes[v][0]; nb_hint=modes[v][1]; double t=now();
    for (int l=0;l<30;l++) for(int s=0;s<7;s++) amx_linear(x, M, shapes[s][0], shapes[s][0], w[l][s], shapes[s][1], 0, out, 1);
    t=now()-t; if(r>1){ if(t<bests[v])bests[v]=t; sums[v]+=t;} }
 for(int v=0;v<nm;v++) printf("M=%d bytes %d hint T%d best %.2f mean %.2f\n", M, modes[v][0], modes[v][1], bests[v]*1e3, sums[v]/(reps-2)*1e3);
  
}
